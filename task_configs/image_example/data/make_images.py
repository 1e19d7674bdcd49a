"""Writes the example's images (32x32 PNGs, one colour each, a white square in the middle): run it to remake them.

python task_configs/image_example/data/make_images.py
"""

import os

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 210, 40)}

if __name__ == "__main__":
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images")
    os.makedirs(here, exist_ok=True)
    for name, rgb in COLOURS.items():
        im = Image.new("RGB", (32, 32), rgb)
        im.paste((255, 255, 255), (12, 12, 20, 20))
        im.save(os.path.join(here, f"{name}.png"), optimize=True)
