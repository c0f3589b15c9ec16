"""Recipes: one file per stage, each its config dataclass and end-to-end functions, readable top to bottom.
Presets: ``configs/<stage>/<profile>.yaml``."""
