"""Tiny random Voxtral checkpoints for tests and for trying the pipeline offline: the real configs
and tokenizer layout, only the sizes shrunk. ``python -m voxcli.testing.tiny DIR`` writes one in
transformers' format, ``python -m voxcli.testing.tiny_mistral DIR`` in Mistral's (for vLLM).
Nothing outside tests and bench/ imports this package."""

__all__: list[str] = []
