"""A screenshot of notebook 05's explorer for the README: docs/img/explorer.png.

    .venv/bin/python scripts/explorer_screenshot.py            # the cpu run's stage-3 model on the synthetic test
    .venv/bin/python scripts/explorer_screenshot.py --model runs/cpu/stage4_context --n 16

The explorer (`evaluation.explorer.Explorer`) is built as notebook 05 builds it, filtered to utterances with
errors, and its widgets are written to a static page with their state (`ipywidgets.embed`). Widgets need their
JavaScript: the page loads `@jupyter-widgets/html-manager`'s ``embed.js``, fetched once from the npm registry
(`npm pack`, into the cache) because a model hub or CDN is out of reach here. Chromium (Debian's package) takes
the picture headless. The page is a view of the widget state, not a live kernel: the controls are drawn, the
callbacks do not run.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tarfile
from pathlib import Path

from speechlm_lib import config

HTML_MANAGER = "@jupyter-widgets/html-manager@1.0.15"  # ipywidgets 8's page renderer


def embed_script() -> Path:
    """``embed.js`` of the html-manager, from the npm registry once (cached)."""
    folder = config.cache_dir() / "npm"
    script = folder / "package" / "dist" / "embed.js"
    if not script.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        name = subprocess.run(["npm", "pack", HTML_MANAGER], cwd=folder, check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(folder / name) as tar:
            tar.extractall(folder, filter="data")
    return script


def build_page(model: Path, n: int, out: Path) -> Path:
    """The explorer over the first `n` English test utterances, decoded by `model`, as a static page in `out`."""
    from ipywidgets.embed import embed_minimal_html

    from speechlm_lib.evaluation.explorer import Explorer
    from speechlm_lib.evaluation.suite import set_keywords
    from speechlm_lib.evaluation.systems import SYSTEMS
    from speechlm_lib.evaluation.testsets import load_test_sets

    sets = load_test_sets(["synthetic"], config.profile(), n)
    label = f"{model.parent.name}/{model.name}"
    ex = Explorer(sets, {label: lambda: SYSTEMS.build("speechlm", folder=model)},
                  keywords=set_keywords(sets["synthetic"])[:5])
    ex.errors_box.value = True  # the interesting ones: utterances with errors
    ex.audio.value = b""  # the player is drawn without the clip (the page stays small)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(embed_script(), out / "embed.js")
    page = out / "explorer.html"
    embed_minimal_html(page, views=[ex.widget], title="speechlm explorer", embed_url="embed.js",
                       requirejs=False)
    # a file:// page may not load a script marked crossorigin (no CORS for files): the local copy needs none
    page.write_text(page.read_text(encoding="utf-8").replace(' crossorigin="anonymous"', ""), encoding="utf-8")
    return page


def screenshot(page: Path, png: Path, size: str = "1000,440") -> Path:
    """Chromium, headless, takes `png` of `page` once its widgets have drawn."""
    png.parent.mkdir(parents=True, exist_ok=True)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium here: sudo apt-get install chromium")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", "--virtual-time-budget=8000", f"--screenshot={png}",
                    page.resolve().as_uri()], check=True, capture_output=True)
    return png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=config.runs_dir() / "cpu" / "stage3_lora")
    ap.add_argument("--n", type=int, default=24, help="test utterances decoded")
    ap.add_argument("--out", type=Path, default=config.repo_root() / "docs" / "img" / "explorer.png")
    args = ap.parse_args()
    page = build_page(args.model, args.n, config.cache_dir() / "explorer_page")
    print(f"page {page}\nscreenshot {screenshot(page, args.out)}")


if __name__ == "__main__":
    main()
