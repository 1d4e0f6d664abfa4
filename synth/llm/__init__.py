"""Talking to LLMs: the ChatML template (``chat``), requests and results (``base``), the transformers, OpenAI-compatible
and vLLM backends (``backends``; the OpenAI-compatible one, with its server fleets, in ``openai_backend``), the
request cache (``cache``), the factory and CLI (``generate``), and the default CPU teacher (``teacher``).
Import-free: the Dagster code location imports these modules only inside assets."""
