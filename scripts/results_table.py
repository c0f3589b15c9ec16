"""Make the README's results table from runs/<profile>/results.json.

    python scripts/results_table.py            # print the table for the cpu profile
    python scripts/results_table.py --write    # replace the tables between the README's markers:
                                               # every profile with a runs/<profile>/results.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def table(results: dict) -> str:
    rows = ["| stage | metrics | seconds | command |", "|---|---|---|---|"]
    for stage, entry in results["stages"].items():
        cmd = f"`{entry['command']}`" if entry.get("command") else ""
        metrics = "; ".join(f"{k} {_fmt(v)}" for k, v in entry.get("metrics", {}).items())
        rows.append(f"| {stage} | {metrics} | {_fmt(entry.get('seconds', ''))} | {cmd} |")
    return "\n".join(rows)


def profile_text(profile: str) -> str | None:
    """The heading and table of one profile's results, or None when it has none."""
    path = ROOT / "runs" / profile / "results.json"
    if not path.is_file():
        return None
    return f"Profile `{profile}`, from `{path.relative_to(ROOT)}`:\n\n" + table(json.loads(path.read_text()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--write", action="store_true", help="rewrite README.md between the markers (all profiles)")
    args = ap.parse_args()
    if not args.write:
        text = profile_text(args.profile)
        if text is None:
            print(f"runs/{args.profile}/results.json: no results yet; run the tutorial first", file=sys.stderr)
            return 1
        print(text)
        return 0
    texts = [t for t in (profile_text(p) for p in ("cpu", "gpu")) if t is not None]
    if not texts:
        print("runs/*/results.json: no results yet; run the tutorial first", file=sys.stderr)
        return 1
    readme = (ROOT / "README.md").read_text()
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = "\n\n".join(texts)
    (ROOT / "README.md").write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
