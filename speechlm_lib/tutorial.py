"""Run the tutorial's notebooks headless, in order, and time them.

``python -m speechlm_lib.tutorial`` executes every ``notebooks/NN_*.ipynb``
with the active profile, writes the executed copies to
``runs/<profile>/notebooks/`` and stamps each stage recorded in
``runs/<profile>/results.json`` with the notebook that produced it, its
wall time and the command that reproduces it.

While it runs it prints a line as each code cell starts (notebook, cell number
out of the total, time so far), a reminder every 30 s while a long cell runs,
and each notebook's headline metrics when it ends. A failing cell stops the run
with the notebook, the cell and its error. The kernels talk to the runner over
local IPC sockets, so the kernel's "running over TCP without encryption"
warning does not appear; their torch thread count is `config.threads()`.

``python -m speechlm_lib.tutorial --cells`` runs nothing and prints where the last run's time went: the
code cells that took 30 s or more, read from the executed copies' timing. The ``tutorial`` record keeps
the same list (``slow_cells``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from speechlm_lib import results
from speechlm_lib.config import PROFILE_ENV, THREADS_ENV, profile, repo_root, runs_dir, threads

#: the metrics printed when a notebook that recorded this stage ends (others: up to 3 ``test_*`` metrics)
HEADLINES = {
    "corpus": ("utterances", "hours", "speakers"),
    "stage1_ctc": ("test_wer", "test_cer"),
    "stage2_speechlm": ("test_wer", "test_cer", "whisper_tiny_test_wer", "rtf"),
    "stage3_lora": ("asr_en_wer", "asr_de_wer", "ast_de_bleu", "train_seconds"),
    "stage4_context": ("ict_none_b_wer", "ict_0_b_wer", "ict_none_wer", "train_seconds"),
    "stage5_evaluation": ("speed_ratio_speechlm_to_faster_whisper",),
}
HEARTBEAT_SECONDS = 30.0
SLOW_CELL_SECONDS = 30.0  # a cell this slow is named in the ``tutorial`` record (`slow_cells`)


def notebooks(folder: Path | None = None) -> list[Path]:
    """The tutorial's notebooks in order (``NN_name.ipynb``)."""
    folder = folder or repo_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def clock(seconds: float) -> str:
    """``75.3`` -> ``'1:15'``; an hour or more -> ``'1:02:03'``."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class CellFailed(RuntimeError):
    """A notebook cell raised: names the notebook, the cell and the error."""

    def __init__(self, notebook: str, index: int, total: int, source: str, error: str):
        self.notebook, self.index, self.total = notebook, index, total
        lines = source.strip().splitlines()
        shown = "\n".join("    " + l for l in lines[:12]) + ("\n    ..." if len(lines) > 12 else "")
        super().__init__(f"{notebook}: cell {index + 1} of {total} failed\n{shown}\n{error.rstrip()}")


class Progress:
    """nbclient hooks that print a line per code cell and a heartbeat during long cells."""

    def __init__(self, name: str, total: int, write=print, heartbeat: float = HEARTBEAT_SECONDS):
        self.name, self.total, self.write, self.heartbeat = name, total, write, heartbeat
        self.start = time.perf_counter()
        self._cell: tuple[int, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def elapsed(self) -> str:
        return clock(time.perf_counter() - self.start)

    def on_cell_start(self, cell, cell_index: int, **_) -> None:
        if cell.get("cell_type") != "code":
            return
        self._cell = (cell_index, time.perf_counter())
        self.write(f"  {self.name}  cell {cell_index + 1}/{self.total}  [{self.elapsed()}]")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if self._cell is not None:
                index, since = self._cell
                self.write(f"  {self.name}  cell {index + 1}/{self.total} still running "
                           f"({clock(time.perf_counter() - since)} in this cell)  [{self.elapsed()}]")

    def __enter__(self):
        if self.heartbeat:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _error_text(cell) -> str:
    """The traceback a failed cell left in its outputs, ANSI colours removed."""
    import re

    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            text = "\n".join(out.get("traceback", [])) or f"{out.get('ename')}: {out.get('evalue')}"
            return re.sub(r"\x1b\[[0-9;]*m", "", text)
    return "(no traceback in the cell's outputs)"


def execute(nb_path: Path, out_path: Path | None = None, timeout: int = 3600, progress: bool = False) -> float:
    """Execute one notebook in its own folder; save the executed copy; return seconds.

    The saved copy keeps every output; progress bars (ipywidgets) are replaced by their final text
    (`publish.finalize_widgets`). Raises `CellFailed` (notebook, cell, source, traceback) on an error.
    `progress`: print a line per code cell and a heartbeat during long cells.
    """
    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from speechlm_lib.publish import finalize_widgets

    nb = nbformat.read(str(nb_path), as_version=4)
    total = len(nb.cells)
    env_threads = os.environ.get(THREADS_ENV) or str(threads())
    with tempfile.TemporaryDirectory(prefix="speechlm-kernel-") as sockets:
        # IPC sockets in a private folder: no TCP ports, no "without encryption" warning
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(nb_path.parent)}})
        tracker = Progress(nb_path.name, total, heartbeat=HEARTBEAT_SECONDS if progress else 0)
        if progress:
            client.on_cell_start = tracker.on_cell_start
        start = time.perf_counter()
        env = {**os.environ, THREADS_ENV: env_threads, "SPEECHLM_NOTEBOOK": nb_path.stem}
        try:
            with tracker:
                client.execute(env=env)
        except CellExecutionError as err:
            index = next((i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"
                          and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
            if index is None:
                raise
            raise CellFailed(nb_path.name, index, total, nb.cells[index].source, _error_text(nb.cells[index])) \
                from err
        finally:
            if km.has_kernel:  # a kernel manager we made is ours to stop (nbclient stops only its own)
                km.shutdown_kernel(now=False)
            if out_path is not None:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                nbformat.write(finalize_widgets(nb), str(out_path))
    return time.perf_counter() - start


def cell_seconds(nb, at_least: float = 0.0) -> list[tuple[int, float, str]]:
    """``[(cell number, seconds, first line)]`` of an executed notebook's code cells that took `at_least`
    seconds, slowest first, read from the timing nbclient stamps on each cell (``metadata.execution``).
    Cell numbers count from 1 over all cells, as the runner's progress lines do; the line shown is the first
    that is not an import or a comment; cells without timing are left out."""
    from datetime import datetime

    rows = []
    for n, cell in enumerate(nb["cells"], 1):
        stamp = cell.get("metadata", {}).get("execution", {})
        start, end = stamp.get("iopub.execute_input"), stamp.get("shell.execute_reply")
        if cell.get("cell_type") != "code" or not (start and end):
            continue
        seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                   - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
        if seconds >= at_least:
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            first = next((line for line in source.splitlines()
                          if line.strip() and not line.startswith(("from ", "import ", "#"))), "")
            rows.append((n, round(seconds, 1), first.strip()[:80]))
    return sorted(rows, key=lambda r: -r[1])


def headline(stage: str, metrics: dict) -> str:
    """``'stage1_ctc: test_wer 0.527, test_cer 0.154'``: the stage's headline metrics."""
    keys = HEADLINES.get(stage) or [k for k in metrics if k.startswith("test_")][:3] or list(metrics)[:3]
    parts = [f"{k} {metrics[k]:.3g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
             for k in keys if k in metrics and metrics[k] is not None]
    return f"{stage}: " + ", ".join(parts)


def run_all(command: str, only: list[str] | None = None, write=print) -> dict[str, float]:
    """Execute the notebooks in order (or those whose names contain one of `only`)."""
    os.environ["SPEECHLM_COMMAND"] = command
    out_dir = runs_dir() / profile() / "notebooks"
    todo = [nb for nb in notebooks() if not only or any(o in nb.name for o in only)]
    times, cells = {}, {}
    for n, nb in enumerate(todo, 1):
        before = results.load().get("stages", {})
        write(f"[{profile()}] notebook {n}/{len(todo)}: {nb.name}")
        seconds = execute(nb, out_dir / nb.name, progress=True)
        times[nb.name] = round(seconds, 1)
        cells[nb.name] = slow_cells(out_dir / nb.name)
        new = _stamp_new_stages(before, nb.name, seconds, command)
        lines = [headline(stage, metrics) for stage, metrics in new.items()] or ["(recorded no results)"]
        write(f"[{profile()}] {nb.name} done in {clock(seconds)}: " + "; ".join(lines))
    _record_times(times, command, partial=bool(only), cells=cells)
    return times


def slow_cells(executed: Path, at_least: float = SLOW_CELL_SECONDS) -> dict[str, float]:
    """``{"cell 13: model, run = train_encoder(...)": 351.2}``: an executed notebook's cells that took
    `at_least` seconds, slowest first (`cell_seconds`)."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    return {f"cell {n}: {first}": seconds for n, seconds, first in cell_seconds(nb, at_least)}


def _record_times(times: dict[str, float], command: str, partial: bool,
                  cells: dict[str, dict] | None = None) -> None:
    """Record the notebooks' times (and their slow cells, `slow_cells`) under ``tutorial``. A full run
    replaces the record; a partial run (``--only``) replaces just the notebooks it ran, keeps the others'
    earlier times and adds what it ran to ``rerun``, so the total says which notebooks were timed apart."""
    metrics = {"notebook_seconds": times, "slow_cells": cells or {}}
    if partial:
        earlier = results.load().get("stages", {}).get("tutorial", {}).get("metrics", {})
        metrics = {"notebook_seconds": {**earlier.get("notebook_seconds", {}), **times},
                   "slow_cells": {**earlier.get("slow_cells", {}), **(cells or {})},
                   "rerun": sorted(set(earlier.get("rerun", [])) | set(times))}
    metrics["total_seconds"] = round(sum(metrics["notebook_seconds"].values()), 1)
    results.record("tutorial", metrics, command=command, replace=not partial)


def _stamp_new_stages(before: dict, notebook: str, seconds: float, command: str) -> dict[str, dict]:
    """Give every stage this notebook recorded its notebook name, time and command; return their metrics."""
    after = results.load()
    new = {}
    for name, entry in after["stages"].items():
        if before.get(name, {}).get("recorded_at") != entry.get("recorded_at"):
            results.record(name, {}, command=command, seconds=seconds, notebook=notebook)
            new[name] = entry.get("metrics", {})
    return new


def print_slow_cells(folder: Path, only: list[str] | None = None, write=print) -> int:
    """Print each executed notebook in `folder`'s slow cells (`slow_cells`) and their share of its time."""
    found = [nb for nb in notebooks(folder) if not only or any(o in nb.name for o in only)]
    if not found:
        write(f"no executed notebooks in {folder}: run the tutorial first (scripts/tutorial.sh)")
        return 1
    for nb in found:
        cells = slow_cells(nb)
        write(f"{nb.name}: {clock(sum(cells.values()))} in {len(cells)} cells of {SLOW_CELL_SECONDS:.0f} s or more")
        for name, seconds in cells.items():
            write(f"  {clock(seconds):>7}  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names contain these")
    ap.add_argument("--cells", action="store_true", help="run nothing: print where the time of the last run went "
                    f"(code cells of runs/<profile>/notebooks/ that took {SLOW_CELL_SECONDS:.0f} s or more)")
    args = ap.parse_args(argv)
    if args.cells:
        return print_slow_cells(runs_dir() / profile() / "notebooks", args.only)
    command = f"{PROFILE_ENV}={profile()} bash scripts/tutorial.sh"
    print(f"tutorial ({profile()}): torch threads {threads()} (set {THREADS_ENV} to change)", flush=True)
    try:
        times = run_all(command, args.only, write=lambda line: print(line, flush=True))
    except CellFailed as err:
        print(f"\nFAILED {err}", file=sys.stderr, flush=True)
        return 1
    print(f"tutorial ({profile()}): {len(times)} notebooks in {clock(sum(times.values()))}; "
          f"results in {results.results_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
