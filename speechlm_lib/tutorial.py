"""Run the tutorial's notebooks headless, in order, and time them.

``python -m speechlm_lib.tutorial`` executes every ``notebooks/NN_*.ipynb``
with the active profile, writes the executed copies to
``runs/<profile>/notebooks/`` and stamps each stage recorded in
``runs/<profile>/results.json`` with the notebook that produced it, its
wall time and the command that reproduces it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from speechlm_lib import results
from speechlm_lib.config import PROFILE_ENV, profile, repo_root, runs_dir


def notebooks(folder: Path | None = None) -> list[Path]:
    """The tutorial's notebooks in order (``NN_name.ipynb``)."""
    folder = folder or repo_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def execute(nb_path: Path, out_path: Path | None = None, timeout: int = 3600) -> float:
    """Execute one notebook in its own folder; save the executed copy; return seconds.

    Raises `nbclient.exceptions.CellExecutionError` (with the failing cell) on error.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(nb_path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(nb_path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(out_path))
    return time.perf_counter() - start


def run_all(command: str, only: list[str] | None = None) -> dict[str, float]:
    """Execute the notebooks in order (or those whose names contain one of `only`)."""
    os.environ["SPEECHLM_COMMAND"] = command
    out_dir = runs_dir() / profile() / "notebooks"
    times = {}
    for nb in notebooks():
        if only and not any(o in nb.name for o in only):
            continue
        before = results.load().get("stages", {})
        print(f"[{profile()}] running {nb.name} ...", flush=True)
        seconds = execute(nb, out_dir / nb.name)
        times[nb.name] = round(seconds, 1)
        print(f"[{profile()}] {nb.name} done in {seconds:.1f} s", flush=True)
        _stamp_new_stages(before, nb.name, seconds, command)
    results.record("tutorial", {"notebook_seconds": times, "total_seconds": round(sum(times.values()), 1)},
                   command=command)
    return times


def _stamp_new_stages(before: dict, notebook: str, seconds: float, command: str) -> None:
    """Give every stage this notebook recorded its notebook name, time and command."""
    after = results.load()
    for name, entry in after["stages"].items():
        if before.get(name, {}).get("recorded_at") != entry.get("recorded_at"):
            results.record(name, {}, command=command, seconds=seconds, notebook=notebook)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names contain these")
    args = ap.parse_args(argv)
    command = f"{PROFILE_ENV}={profile()} bash scripts/tutorial.sh"
    times = run_all(command, args.only)
    print(f"tutorial ({profile()}): {len(times)} notebooks in {sum(times.values()):.0f} s; "
          f"results in {results.results_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
