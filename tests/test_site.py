"""The course site: built by one command from executed notebooks, and read in a real headless browser.

The notebooks are the published reference run (docs/course/) when it is there, else the last smoke run
(runs/smoke/notebooks/, made by `SPEECHLM_PROFILE=smoke bash scripts/tutorial.sh` or tests/test_notebooks.py
with SPEECHLM_RUNS unset). The browser test needs Chromium and its driver from Debian
(`apt-get install chromium chromium-driver`) and selenium; without them it is skipped, saying why.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _executed() -> tuple[str, Path] | None:
    runs = Path(os.environ.get("SPEECHLM_RUNS", ROOT / "runs"))
    for profile, folder in (("cpu", ROOT / "docs" / "course"), ("smoke", runs / "smoke" / "notebooks"),
                            ("smoke", ROOT / "runs" / "smoke" / "notebooks")):
        if len(list(folder.glob("[0-9][0-9]_*.ipynb"))) >= 3:
            return profile, folder
    return None


def _expected(nb_path: Path) -> tuple[int, int]:
    """(figures, tables) a notebook's outputs hold: PNG images, and HTML or Markdown tables."""
    nb = nbformat.read(str(nb_path), as_version=4)
    figures = tables = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            figures += "image/png" in data
            html = "".join(data.get("text/html", ""))
            markdown = "".join(data.get("text/markdown", ""))
            tables += html.count("<table") if html else sum(l.startswith("|---") for l in markdown.splitlines())
    return figures, tables


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("mkdocs", "mkdocs_jupyter", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (requirements.txt; bash scripts/setup.sh)")
    found = _executed()
    if found is None:
        pytest.skip("no executed notebooks: run `SPEECHLM_PROFILE=smoke bash scripts/tutorial.sh` first")
    profile, source = found
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "site.py"), "--profile", profile, "--source", str(source),
                    "--out", str(out)], check=True, env=env, cwd=ROOT)
    return out, source


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed (requirements.txt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_the_site_has_a_page_per_notebook_and_the_home_page(site):
    out, source = site
    assert (out / "index.html").is_file()
    for nb in sorted(source.glob("[0-9][0-9]_*.ipynb")):
        assert (out / "course" / f"{nb.stem}.html").is_file(), f"no page for {nb.name}"


def test_every_notebook_page_renders_its_figures_and_tables(site, browser):
    out, source = site
    for nb in sorted(source.glob("[0-9][0-9]_*.ipynb")):
        figures, tables = _expected(nb)
        browser.get((out / "course" / f"{nb.stem}.html").as_uri())
        shown = browser.execute_script("""
            const main = document.querySelector('article') || document.body;
            const imgs = [...main.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png'));
            return {drawn: imgs.filter(i => i.complete && i.naturalWidth > 100 && i.getBoundingClientRect().width > 100).length,
                    tables: main.querySelectorAll('table').length,
                    title: document.title, text: main.innerText.length};""")
        assert shown["drawn"] == figures, f"{nb.name}: {shown['drawn']} of {figures} figures drawn"
        assert shown["tables"] >= tables, f"{nb.name}: {shown['tables']} of {tables} tables rendered"
        assert shown["text"] > 2000 and nb.stem.split("_", 1)[0] in (browser.current_url or "")
    browser.get((out / "index.html").as_uri())
    assert "speechlm" in browser.title
