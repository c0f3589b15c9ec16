#!/usr/bin/env bash
# Run the whole tutorial headless: every notebook in order, on the profile in $SPEECHLM_PROFILE
# (default cpu). Executed notebooks and results.json land in runs/<profile>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SPEECHLM_PROFILE=${SPEECHLM_PROFILE:-cpu}
exec .venv/bin/python -m speechlm_lib.tutorial "$@"
