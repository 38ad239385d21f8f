"""Evaluation: per-image metrics, prediction over datasets, statistics and summary tables."""
