"""Qwen-driven synthetic data: teacher backends, quality scoring, SFT/preference/pretraining synthesis (issue 3)."""
