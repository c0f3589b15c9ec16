"""Experiments: studies that reuse a stage's recipe and keep their own settings (notebook 02's comparisons,
the copy ceiling)."""
