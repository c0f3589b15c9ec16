# Sourced by the other scripts, in the repo root on the device machine: the wheels in /tmp/site, the
# corpus and results outside the synced tree (a later call re-sends the tree)
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export SPEECHLM_RUNS=/root/runs SPEECHLM_DATA=/root/data
