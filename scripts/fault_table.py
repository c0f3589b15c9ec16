"""Make docs/reliability.md from the fault suite: each test of tests/test_faults.py is a row.

    python scripts/fault_table.py            # run the suite (~10 s), write docs/reliability.md
    python scripts/fault_table.py --print    # print the table instead of writing

A row's case and outcome come from the test's docstring (first lines: the case; after ``->``:
the outcome it asserts), its result from the run (pytest's JUnit XML), so the table can only
claim what the suite checked just now.
"""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "test_faults.py"
DOC = ROOT / "docs" / "reliability.md"
AREAS = {"audio": "audio file", "wave": "in-memory audio", "manifest": "manifest", "text": "text",
         "cache": "cache", "train": "training (NaN/inf)", "ckpt": "checkpoint / interruption"}

HEADER = """# Reliability: bad input and faults

What happens when a file is bad or a run is interrupted. Every row below is a test in
`tests/test_faults.py` that asserts the exact outcome: the error names the file (or item) and
the problem, or the bad item is skipped, counted and named while every good item comes out.
Regenerate this page (it runs the suite, ~10 s) with:

    python scripts/fault_table.py

## Where the checks live (one path for every stage)

- **Audio** (`speechlm_lib/data/audio.py`): `check_file` (a `stat` only: a regular file, not empty, at most
  `MAX_FILE_BYTES` = 1 GiB) runs before any byte is read or hashed, so `/dev/zero` or a FIFO never hangs;
  `load_audio` checks the header's duration before decoding, then the samples; `check_wave` gives audio held in
  memory the same checks (mono `(samples,)`, at least 400 samples = 25 ms, finite, not over the maximum).
  Stage-1 data, the stage-2 feature cache, `transcribe` and `whisper_transcribe` all go through them.
- **Manifest rows** (`speechlm_lib/data/records.py`): each line is decoded on its own (one bad byte costs one
  line), a UTF-8 BOM is ignored, fields are type-checked (`"text": null` is an error, never the transcript
  "None"), and a repeated id is skipped; bulk readers name each skipped row as `file:line` with the reason.
- **Feature cache** (`speechlm_lib/data/feature_cache.py`): each entry records its content key, shape and
  SHA-256 and is written atomically; a truncated, corrupted or misplaced entry is deleted, counted
  (`cache.bad`, `cache.report`) and recomputed, never used. The cache folder's key includes a hash of the
  encoder's weights, so the hub's Whisper and the offline converted copy never share entries.
- **Converted models** (`speechlm_lib/models/sources.py`): the marker of a cached offline copy lists each file's
  size and a hash of its first and last MiB; a damaged copy is rebuilt, and says why.
- **Training** (`speechlm_lib/training/`): a NaN/inf micro-batch is skipped and leaves the model exactly as it
  was (buffers such as BatchNorm statistics are restored; an update with no good micro-batch takes no optimizer
  step); more than `TrainConfig.max_skipped_share` (0.25) of a run's micro-batches skipped stops it with
  `NonFiniteTrainingError`.

## What a resume trusts

Checkpoints are written to `.step_N.partial`, sealed with `MANIFEST.json` (size and SHA-256 of every file) and
only then renamed to `step_N`. Resume takes the newest checkpoint whose files match its manifest, prints which,
and names each newer one it passes over and why (a missing RNG file is such a reason, never a silent change of
results). Stale `.partial` folders are removed. What it reads can only be data: weights from safetensors, the
optimizer, RNG and scaler states through `torch.load(weights_only=True)`, and the trainer's counters, history and
LR scheduler from JSON (`trainer_state.json`). Nothing is unpickled with `weights_only=False`; a checkpoint
folder from someone else can at worst hold wrong numbers, not run code. The SHA-256 manifest guards against
damage, not against a deliberate forgery: train only from checkpoints whose weights you are willing to use.

## The cases
"""


def cases() -> list[dict]:
    """One dict per test function of the suite: name, area, case, outcome (from its docstring)."""
    out = []
    for node in ast.parse(SUITE.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            doc = ast.get_docstring(node) or ""
            case, _, outcome = doc.partition("->")
            prefix = node.name.split("_")[1]
            out.append({"name": node.name, "area": AREAS.get(prefix, prefix),
                        "case": " ".join(case.split()), "outcome": " ".join(outcome.split())})
    return out


def run_suite() -> dict[str, list[str]]:
    """Run the suite; test function name -> outcomes of its (parametrized) runs."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "faults.xml"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUITE),
                        f"--junitxml={xml}"], cwd=ROOT, env=env, check=False)
        results: dict[str, list[str]] = {}
        for tc in ET.parse(xml).getroot().iter("testcase"):
            name = tc.get("name", "").split("[")[0]
            bad = [c.tag for c in tc if c.tag in ("failure", "error", "skipped")]
            results.setdefault(name, []).append(bad[0] if bad else "passed")
    return results


def table(rows: list[dict], results: dict[str, list[str]]) -> str:
    lines = ["| # | area | case | outcome (asserted) | test | result |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        got = results.get(r["name"], ["not run"])
        result = got[0] if len(got) == 1 else (f"passed ({len(got)}/{len(got)})" if set(got) == {"passed"}
                                               else ", ".join(got))
        lines.append(f"| {i} | {r['area']} | {r['case']} | {r['outcome']} | `{r['name']}` | {result} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print the table instead of writing the doc")
    args = ap.parse_args()
    rows, results = cases(), run_suite()
    text = table(rows, results)
    runs = sum(len(v) for v in results.values())
    passed = sum(v.count("passed") for v in results.values())
    summary = f"\n\n{len(rows)} cases, {runs} test runs, {passed} passed.\n"
    if args.print:
        print(text + summary)
    else:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(HEADER + "\n" + text + summary)
        print(f"wrote {DOC.relative_to(ROOT)}: {len(rows)} cases, {passed}/{runs} passed")
    return 0 if passed == runs else 1


if __name__ == "__main__":
    sys.exit(main())
