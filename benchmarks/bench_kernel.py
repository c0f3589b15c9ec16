"""Does a notebook kernel train slower than a script? The same LLM training steps, timed in this process and
inside a Jupyter kernel started the way the tutorial runner starts one (`tutorial.execute`), alternately.

    .venv/bin/python benchmarks/bench_kernel.py --profile cpu            # 2 x 8 steps each way, a few minutes
    .venv/bin/python benchmarks/bench_kernel.py --steps 2 --rounds 1     # plumbing

The work: full fine-tuning steps of SmolLM2-135M-Instruct (AdamW, batch 8 x 160 random tokens) at the
library's thread count. Why: the tutorial's stage-4 training took 854-1,050 s in notebook 04 against 505 s in
``bench_stage4.py`` (another session's machine), and the tutorial misses its 45-minute target. Run it alone:
a second process on the two cores spoils both timings. Recorded as ``kernel_overhead`` in results.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path


def train_steps(steps: int) -> float:
    """Seconds for `steps` full training steps of the default LLM (the loading not counted)."""
    import torch

    from speechlm_lib.config import set_threads
    from speechlm_lib.models.sources import load_llm

    set_threads()
    llm, _ = load_llm()
    llm.train()
    opt = torch.optim.AdamW(llm.parameters(), lr=1e-5)
    x = torch.randint(0, 1000, (8, 160), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(steps):
        llm(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start


def in_kernel(steps: int) -> float:
    """`train_steps` run in a fresh kernel by `tutorial.execute`; its printed seconds."""
    import nbformat

    from speechlm_lib.tutorial import execute

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"from bench_kernel import train_steps\nprint(train_steps({steps}))")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ipynb"
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        nbformat.write(nb, str(path))
        execute(path, path)
        out = nbformat.read(str(path), as_version=4).cells[0].outputs
    return float("".join(o.get("text", "") for o in out if o.get("output_type") == "stream").split()[-1])


def main() -> None:
    from speechlm_lib import config, results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--steps", type=int, default=8, help="training steps a timing")
    ap.add_argument("--rounds", type=int, default=2, help="timings each way, alternating")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    script, kernel = [], []
    for r in range(args.rounds):
        script.append(train_steps(args.steps))
        kernel.append(in_kernel(args.steps))
        print(f"round {r + 1}: script {script[-1]:.1f} s, kernel {kernel[-1]:.1f} s", flush=True)
    metrics = {"steps": args.steps, "threads": config.threads(), "script_seconds": script,
               "kernel_seconds": kernel, "kernel_to_script": statistics.mean(kernel) / statistics.mean(script)}
    print(f"kernel / script: {metrics['kernel_to_script']:.2f}")
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record("kernel_overhead", metrics, command=command, profile_name=args.profile, replace=True)


if __name__ == "__main__":
    main()
