"""The documentation: a README for users (at most 350 lines), the MkDocs site builds with ``--strict``, the numbers
it quotes are BENCHMARKS.md's, and the commands of README.md and docs/ that run on CPU run.

A command block is run when the HTML comment ``<!-- cpu-test -->`` (or ``<!-- cpu-test exit=N -->``, expecting
that exit code) stands right before its fenced ``bash`` block (docs/contributing.md, "The documentation").
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import REPO, cli_env

README_MAX_LINES = 350
DOCS = REPO / "docs"
#: A mark on a line of its own (one quoted inside a sentence, as docs/contributing.md does, is not one).
MARK = re.compile(r"^<!--\s*cpu-test\b(?P<opts>[^>]*)-->[ \t]*$", re.M)
BLOCK = re.compile(r"^<!--\s*cpu-test\b(?P<opts>[^>]*)-->[ \t]*\n```bash[ \t]*\n(?P<code>.*?)\n```", re.S | re.M)
#: A number with a unit (``12.6 s``, ``38.8-39.4 ms``, ``1.87x``, ``217 MB``): a measurement, unless allowed here.
MEASURE = re.compile(
    r"(?<![\w.-])(\d[\d,]*(?:\.\d+)?)(?:\s*[-\u2013]\s*(\d[\d,]*(?:\.\d+)?))?\s?(ms|s|x|MB|GB|MiB|GiB|%|tok/s)(?![\w/])"
)
NOT_MEASUREMENTS = {
    "600 s": "an example --timeout in a quoted message (troubleshooting)",
}


def doc_pages() -> list[Path]:
    """README.md and every page of the site."""
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def cpu_blocks(page: Path) -> list[tuple[str, int, int]]:
    """``(code, expected exit code, line)`` of each marked block of ``page``, in page order."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for m in BLOCK.finditer(text):
        opts = dict(re.findall(r"(\w+)=(\S+)", m.group("opts")))
        blocks.append((m.group("code"), int(opts.get("exit", 0)), text.count("\n", 0, m.start()) + 1))
    return blocks


def _rel(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


PAGES_WITH_COMMANDS = [p for p in doc_pages() if cpu_blocks(p)]
#: Where the docs must build (CI): a missing mkdocs or dg fails instead of skipping.
REQUIRE_ENV = "LLM_INFER_REQUIRE_DOCS"


def _required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get(REQUIRE_ENV))


def test_the_readme_is_for_users_and_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    # CI runs "the test command the README gives" (.ci/run): it must stay there, exactly.
    assert "```bash\npytest -q\n```" in (REPO / "README.md").read_text(encoding="utf-8")


def test_every_cpu_test_mark_stands_before_a_bash_block() -> None:
    """A mistyped mark or a mark before another kind of block would silently test nothing."""
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        assert len(MARK.findall(text)) == len(cpu_blocks(page)), f"{_rel(page)}: a cpu-test mark not before ```bash"
    assert len(PAGES_WITH_COMMANDS) >= 5


def test_numbers_in_the_docs_are_measured_in_benchmarks() -> None:
    """README and docs say nothing BENCHMARKS.md does not measure: every number with a unit appears there."""
    bench = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    unmeasured = []
    for page in doc_pages():
        if page == DOCS / "benchmarks.md":  # BENCHMARKS.md itself, included
            continue
        for m in MEASURE.finditer(page.read_text(encoding="utf-8")):
            numbers = [n for n in m.groups()[:2] if n]
            if m.group(0) not in NOT_MEASUREMENTS and any(n not in bench for n in numbers):
                unmeasured.append(f"{_rel(page)}: {m.group(0)!r}")
    assert not unmeasured, "numbers not in BENCHMARKS.md: " + "; ".join(unmeasured)


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing anchor or a page left out of the nav fails."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        why = "mkdocs or mkdocs-material is not installed (pip install -e '.[docs]')"
        if _required():
            pytest.fail(f"{why}; CI must build the docs (CI or {REQUIRE_ENV} is set)")
        pytest.skip(why)
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path)],
        cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (tmp_path / "index.html").is_file() and (tmp_path / "zh" / "index.html").is_file()
    # The README is no page of the site: its links into docs/ (and their anchors) are checked against the build.
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", (REPO / "README.md").read_text("utf-8")):
        if "://" in target:
            continue
        if not (REPO / target).exists():
            broken.append(target)
        elif anchor and target.startswith("docs/") and target.endswith(".md"):
            page = target[len("docs/") : -len(".md")]
            html = tmp_path / (page[: -len("index")] if page.endswith("index") else page + "/") / "index.html"
            if f'id="{anchor}"' not in html.read_text(encoding="utf-8"):
                broken.append(f"{target}#{anchor}")
        elif anchor and target == "README.md":
            broken.append(f"{target}#{anchor} (link within the README as #{anchor})")
    for anchor in re.findall(r"\]\(#([^)\s]+)\)", (REPO / "README.md").read_text("utf-8")):
        headings = re.findall(r"^#+ (.+)$", (REPO / "README.md").read_text("utf-8"), re.M)
        if anchor not in {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}:
            broken.append(f"#{anchor}")
    assert not broken, f"README.md links that lead nowhere: {broken}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=_rel)
def test_the_commands_of_a_page_run_on_cpu(page: Path, tmp_path: Path, tiny_model_path: str) -> None:
    """Each marked block, in page order, in one folder holding what a user's checkout and the demo give them."""
    shutil.copytree(REPO / "task_configs", tmp_path / "task_configs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__", "llm_infer_output")
    )
    (tmp_path / ".models").mkdir()
    (tmp_path / ".models" / "tiny-llama").symlink_to(tiny_model_path)  # where the demo builds it
    bin_dir = Path(sys.executable).parent  # llm-infer, python, dg of this environment
    env = cli_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # this checkout's package, and the example dg project as `pip install -e examples/llm_infer_project` would
        PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path / "examples" / "llm_infer_project" / "src")]),
    )
    for code, expected, line in cpu_blocks(page):
        if re.search(r"^\s*dg\s", code, re.M) and not (bin_dir / "dg").exists() and not shutil.which("dg"):
            if _required():
                pytest.fail(f"dg is not installed (the dg extra); CI installs it (CI or {REQUIRE_ENV} is set)")
            pytest.skip("dg is not installed (pip install -e '.[dg]')")
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        where = f"{_rel(page)}:{line}: exit {r.returncode}, expected {expected}\n{code}\n"
        assert r.returncode == expected, where + (r.stdout[-2000:] + r.stderr[-3000:])
        assert "Traceback" not in r.stderr, where + r.stderr[-3000:]
        if expected == 2:  # a mistake is one line
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("llm-infer")]
            assert len(errors) == 1 and ": error: " in errors[0], where + r.stderr[-3000:]
