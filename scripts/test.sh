#!/usr/bin/env bash
# Run the tests: the library's unit tests and every notebook executed in the smoke profile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
