#!/usr/bin/env bash
# Build the course site from a run's executed notebooks: build/site/<profile>/index.html.
#   bash scripts/site.sh                    # the reference run: runs/cpu/notebooks -> docs/course/ -> site
#   bash scripts/site.sh --profile smoke    # from runs/smoke/notebooks (after the smoke tutorial)
# Rebuild (and commit docs/course/) whenever a stage's figures change.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/site.py "$@"
