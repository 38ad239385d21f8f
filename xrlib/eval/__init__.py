"""Evaluation: per-image metrics, predictions, group tables, statistics and the robustness results contract."""
