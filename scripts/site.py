"""Build the course site (mkdocs-material + mkdocs-jupyter) from a run's executed notebooks.

    python scripts/site.py                      # the published reference run: runs/cpu/notebooks -> docs/course/
                                                #   (when that run exists), then the site from docs/course/
    python scripts/site.py --profile smoke      # from runs/smoke/notebooks (nothing is published)
    python scripts/site.py --source DIR --out DIR

The pages: the README as the home page, one page per notebook with its outputs (figures, tables,
progress bars as their final text), and the findings in docs/. The site lands in
``build/site/<profile>/`` (open ``index.html``); it needs no server and no network.
Every notebook is checked first (`publish.problems`): a warning, an unlabelled figure, an
offensive word or a leftover widget stops the build, naming the notebook and the cell.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speechlm_lib.publish import finalize_widgets, problems, publish_run  # noqa: E402

PUBLISHED = ROOT / "docs" / "course"  # the course's reference run (profile cpu), committed with outputs
DOC_PAGES = ("experiments.md", "results.md", "stage2_findings.md", "stage3_findings.md", "stage4_findings.md",
             "whisper_base_findings.md", "real_speech_findings.md", "speed_findings.md", "tutorial_time.md",
             "reliability.md")


def _title(nb_path: Path) -> str:
    import json

    for cell in json.loads(nb_path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            first = "".join(cell["source"]).strip().splitlines()[0]
            return first.lstrip("# ").strip()
    return nb_path.stem


def stage(source: Path, dest: Path, profile: str) -> list[Path]:
    """Copy the notebooks (widgets finalised) and the doc pages into `dest`, the site's docs folder."""
    import nbformat

    if dest.exists():
        shutil.rmtree(dest)
    (dest / "course").mkdir(parents=True)
    notebooks = sorted(source.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(f"{source}: no executed notebooks; run `SPEECHLM_PROFILE={profile} bash scripts/tutorial.sh`")
    failures = []
    for path in notebooks:
        nb = finalize_widgets(nbformat.read(str(path), as_version=4))
        failures += [f"{path.name}: {p}" for p in problems(nb, profile)]
        nbformat.write(nb, str(dest / "course" / path.name))
    if failures:
        raise SystemExit("not fit to publish:\n  " + "\n  ".join(failures))
    readme = (ROOT / "README.md").read_text()
    # links that point into the repository: to the pages staged here, or to the file's path as text
    readme = re.sub(r"\]\(docs/([^)]+\.md)\)", r"](\1)", readme)  # the doc pages are staged beside it
    if (ROOT / "docs" / "img").is_dir():  # pictures the README shows (the explorer)
        shutil.copytree(ROOT / "docs" / "img", dest / "img", dirs_exist_ok=True)
        readme = readme.replace("](docs/img/", "](img/")
    readme = re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)",  # other repository paths: plain text
                    lambda m: m.group(0) if (dest / m.group(2)).exists() or m.group(2) in DOC_PAGES
                    else f"{m.group(1)} (`{m.group(2)}`)", readme)
    (dest / "index.md").write_text(readme)
    for name in DOC_PAGES:
        if (ROOT / "docs" / name).is_file():
            shutil.copy(ROOT / "docs" / name, dest / name)
    return [dest / "course" / p.name for p in notebooks]


def config(docs: Path, site: Path, profile: str, pages: list[Path]) -> str:
    """The mkdocs.yml for a staged folder (YAML by hand: a flat, fixed shape)."""
    nav = "\n".join(f"      - {_title(p)!r}: course/{p.name}" for p in pages)
    extra = "\n".join(f"  - {name.removesuffix('.md').replace('_', ' ').capitalize()!r}: {name}"
                      for name in DOC_PAGES if (docs / name).exists())
    return f"""site_name: "speechlm: give a large language model ears ({profile} run)"
docs_dir: {docs}
site_dir: {site}
use_directory_urls: false
theme:
  name: material
  font: false
plugins:
  - search
  - mkdocs-jupyter:
      execute: false
      include_source: true
      ignore_h1_titles: true
nav:
  - Home: index.md
  - Course:
{nav}
{extra}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("SPEECHLM_PROFILE", "cpu"))
    ap.add_argument("--source", type=Path, help="executed notebooks (default: runs/<profile>/notebooks, "
                                                "for cpu the published docs/course/)")
    ap.add_argument("--out", type=Path, help="the site's folder (default: build/site/<profile>)")
    args = ap.parse_args(argv)
    runs = Path(os.environ.get("SPEECHLM_RUNS", ROOT / "runs"))
    source = args.source
    if source is None:
        source = runs / args.profile / "notebooks"
        if args.profile == "cpu":  # the reference run: publish a fresh run, else build from what is published
            if source.is_dir() and any(source.glob("[0-9][0-9]_*.ipynb")):
                publish_run(source, PUBLISHED)
                print(f"published {source} -> {PUBLISHED.relative_to(ROOT)}")
            source = PUBLISHED
    out = (args.out or ROOT / "build" / "site" / args.profile).resolve()
    docs = ROOT / "build" / "site-src" / args.profile
    pages = stage(source, docs, args.profile)
    cfg = docs.parent / f"mkdocs-{args.profile}.yml"
    cfg.write_text(config(docs, out, args.profile, pages))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's end-of-life banner, printed on every build
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "--clean", "-f", str(cfg)], check=True, env=env)
    print(f"site: {out / 'index.html'} ({len(pages)} notebooks from {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
