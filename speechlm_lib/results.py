"""Machine-readable results: every stage records its headline metrics here.

``record("stage1_ctc", {"wer": 0.12, "cer": 0.04})`` merges into
``runs/<profile>/results.json``::

    {"profile": "cpu", "stages": {"stage1_ctc": {"metrics": {...}, "recorded_at": "...",
                                                  "command": "...", "seconds": 301.2}}}

docs/results.md is generated from this file (`scripts/results_table.py --write`); the README quotes a few figures.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from speechlm_lib.config import profile, runs_dir


def results_path(profile_name: str | None = None) -> Path:
    """``runs/<profile>/results.json`` (``$SPEECHLM_RESULTS`` overrides)."""
    if os.environ.get("SPEECHLM_RESULTS"):
        return Path(os.environ["SPEECHLM_RESULTS"])
    return runs_dir() / (profile_name or profile()) / "results.json"


def load(profile_name: str | None = None) -> dict:
    """The results recorded so far (an empty skeleton when none)."""
    p = results_path(profile_name)
    if p.is_file():
        return json.loads(p.read_text())
    return {"profile": profile_name or profile(), "stages": {}}


def record(stage: str, metrics: dict, command: str | None = None, seconds: float | None = None,
           profile_name: str | None = None, replace: bool = False, **fields) -> Path:
    """Merge `metrics` for `stage` into the results file (written atomically).

    With `replace`, the stage's earlier metrics are dropped first (a run that records as it
    goes starts this way, so a run cut short never mixes with an older one's figures).

    `command` says how to reproduce the figures; by default the environment's
    ``$SPEECHLM_COMMAND`` (set by the tutorial runner) is used. `seconds` and
    any other keyword `fields` (e.g. ``notebook=``) are stored beside the metrics.
    """
    data = load(profile_name)
    entry = data["stages"].setdefault(stage, {})
    if replace:
        entry.clear()
    entry["metrics"] = {**entry.get("metrics", {}), **{k: _plain(v) for k, v in metrics.items()}}
    entry["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    cmd = command or os.environ.get("SPEECHLM_COMMAND")
    if cmd:
        entry["command"] = cmd
    if seconds is not None:
        entry["seconds"] = round(float(seconds), 1)
    entry.update(fields)
    p = results_path(profile_name)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(p)
    return p


def report(stage: str, metrics: dict, started: float, profile_name: str | None = None, **fields) -> Path:
    """A benchmark's ending: print `metrics` one a line, then `record` them (replacing the stage's earlier ones)
    with the command as typed (``python benchmarks/... args``) and the seconds since `started` (`time.perf_counter`)."""
    import shlex
    import sys

    for k, v in metrics.items():
        print(f"{k:36} {v:.4f}" if isinstance(v, float) else f"{k:36} {v}")
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    return record(stage, metrics, command=command, seconds=time.perf_counter() - started,
                  profile_name=profile_name, replace=True, **fields)


def _plain(v):
    """Make numpy/torch scalars JSON-friendly; round floats to 4 decimals."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 4)
    return v
