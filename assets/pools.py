"""Concurrency pools (``@dg.asset(pool=...)``): dagster_home/dagster.yaml limits each to one run at a time across
runs, so one training run and one teacher-heavy run go at once while curation runs alongside; and one run at a time
writes the global dedup folder (the new-crawl sensor starts a run per crawl dump)."""

TRAINING_POOL = "training"
TEACHER_POOL = "teacher"
DEDUP_POOL = "dedup"
