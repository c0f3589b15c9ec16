"""Training: the one generic `Trainer` (accelerate), its callbacks and helpers."""
