"""Dagster asset definitions (thin: the work lives in pipelines/, synth/, training/)."""
