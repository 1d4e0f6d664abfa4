"""Qwen-driven synthesis: teacher, generation backends, quality scoring, synthetic SFT/pretraining/preference data.

Kept import-free so the Dagster code location can read the method names without loading pyarrow or torch.
"""

# The SFT synthesis methods, in the order the sft_data asset runs them (constitutional revises instruction's answers).
SFT_METHODS = ("instruction", "math_rejection", "code_execution", "repurpose", "constitutional")
