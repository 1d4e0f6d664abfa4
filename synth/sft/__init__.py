"""Teacher-driven SFT data (Qwen2 report, post-training), one module per method, each writing a stage folder of
``SFT_SCHEMA`` rows through ``synth.records.run_chunked_stage``:

- ``instruction``: new instructions written from seed prompts, then answered.
- ``repurpose``: long curated documents -> grounded question/answer pairs.
- ``constitutional``: critique against written principles, then revise.
- ``math_rejection``: word problems with computed answers; samples kept when the final answer matches.
- ``code_execution``: solutions kept when the teacher's own assert tests pass in ``synth.sandbox``.

``common`` holds what the methods (and ``synth.preference``, ``synth.rephrase``) share: text checks, sampling, the
ask/check helpers and the command-line helpers. Kept import-free so the Dagster code location can import the package
without pyarrow or torch.

``stage`` runs the chosen methods in order (the ``sft_data`` asset, ``python -m synth.sft``), with the settings of
``synth.settings.SftDataSettings``:

    python -m synth.sft --output data/synthetic/sft --docs data/curated/dedup --instruction-num-seeds 8
    python -m synth.sft --output out/sft --methods math_rejection --math-rejection-num-problems 64
"""
