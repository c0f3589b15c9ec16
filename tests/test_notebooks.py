"""Every notebook runs top to bottom in the smoke profile and records its results.

The notebooks share one runs folder (in order: stage 2 loads what stage 1 saved);
the synthetic smoke corpus is built under data/synth/smoke on first use.
"""
from __future__ import annotations

import json

import nbformat
import pytest

from speechlm_lib import publish, results
from speechlm_lib.tutorial import execute, notebooks

NOTEBOOKS = notebooks()


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("SPEECHLM_PROFILE", "smoke")
    mp.setenv("SPEECHLM_RUNS", str(runs))
    mp.setenv("SPEECHLM_COMMAND", "pytest tests/test_notebooks.py")
    mp.setenv("MPLBACKEND", "Agg")
    yield runs
    mp.undo()


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(len(NOTEBOOKS))]
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells)
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{nb.name}: cells {dirty} carry outputs; notebooks are committed stripped"
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids), f"{nb.name}: every cell needs its own id (nbformat 4.5)"


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_profile(nb, smoke_env):
    before = results.load("smoke")["stages"]
    execute(nb, smoke_env / "notebooks" / nb.name, timeout=600)
    after = results.load("smoke")["stages"]
    new = [s for s, e in after.items() if before.get(s, {}).get("recorded_at") != e.get("recorded_at")]
    assert new, f"{nb.name} recorded no results"
    assert all(after[s]["metrics"] for s in new)
    # what a student reads: no warnings, nothing offensive, labelled figures, bars as text, smoke notes
    executed = nbformat.read(str(smoke_env / "notebooks" / nb.name), as_version=4)
    assert publish.problems(executed, "smoke") == []
