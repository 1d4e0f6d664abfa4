"""Pretraining, SFT, reward model and DPO recipes for Qwen2-architecture models (issues 4 and later)."""
