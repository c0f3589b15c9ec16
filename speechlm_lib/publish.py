"""Executed notebooks as a reader meets them: progress bars as their final text, and the published run.

A notebook executed headless keeps each tqdm bar as an ipywidget: an output that points at a
widget model, with a text fallback frozen at the bar's *first* state (``0%| 0/30``). A static
viewer (GitHub, nbviewer, the course site) shows only that fallback. `finalize_widgets` replaces
every such output by the bar's *last* state as plain text (``train: 100%|██████████| 30/30 [...]``)
and drops the widget state, so the saved notebook reads right anywhere.

`publish_run` copies a run's executed notebooks (``runs/<profile>/notebooks/``) into the published
folder, ``docs/course/`` for the reference run; ``scripts/site.sh`` builds the course site from it.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BAR_WIDTH = 10


def _text(value: str) -> str:
    """An ipywidgets HTML value as plain text (tqdm uses figure spaces and escapes ``<``)."""
    return html.unescape(re.sub(r"<[^>]+>", "", value or "")).replace("\u2007", " ")


def widget_text(model_id: str, state: dict) -> str | None:
    """The final text of a tqdm bar (an HBox of HTML, FloatProgress, HTML), or None if it is not one."""
    model = state.get(model_id)
    if not model or model.get("model_name") != "HBoxModel":
        return None
    parts = []
    for child in model["state"].get("children", []):
        sub = state.get(str(child).replace("IPY_MODEL_", ""), {})
        name, st = sub.get("model_name"), sub.get("state", {})
        if name == "HTMLModel":
            parts.append(_text(st.get("value", "")))
        elif name in ("FloatProgressModel", "IntProgressModel"):
            top, value = st.get("max") or 0, st.get("value") or 0
            filled = int(BAR_WIDTH * min(value / top, 1.0)) if top else 0
            parts.append("|" + "█" * filled + " " * (BAR_WIDTH - filled) + "|")
        else:
            return None
    return "".join(parts).strip() or None


def finalize_widgets(nb):
    """Replace widget outputs by their final text; drop the widget state. Returns `nb` (changed in place).

    A widget whose state was not saved (or that is not a progress bar) keeps its text fallback."""
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            final = widget_text(data[WIDGET_VIEW].get("model_id", ""), state)
            text = final if final is not None else _plain(data.get("text/plain", ""))
            out["data"] = {"text/plain": text}
            out.get("metadata", {}).pop(WIDGET_VIEW, None)
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def _plain(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def widget_outputs(nb: dict) -> list[tuple[int, str]]:
    """``(cell index, text)`` of every output still holding a widget (a finalised notebook has none)."""
    return [(i, _plain(o.get("data", {}).get("text/plain", ""))) for i, c in enumerate(nb.get("cells", []))
            for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]


#: what marks a warning in a cell's output (Python's warnings, transformers' and the kernel's log lines)
WARNING_RE = re.compile(r"\b\w*Warning\b|\bWARNING\b|deprecated|\[transformers\]|warnings\.warn")


def output_text(out: dict) -> str:
    """The text an output shows: a stream, a traceback, or a display's plain, markdown or HTML text."""
    if out.get("output_type") == "stream":
        return _plain(out.get("text", ""))
    if out.get("output_type") == "error":
        return "\n".join(out.get("traceback", []))
    data = out.get("data", {})
    text = "\n".join(_plain(data[k]) for k in ("text/plain", "text/markdown", "text/html") if k in data)
    return re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "data:...", text)  # embedded audio is not text


def problems(nb: dict, profile: str | None = None) -> list[str]:
    """What a reader must not meet in an executed notebook; empty when it is fit to publish.

    * warnings in any output (`WARNING_RE`), and errors;
    * an offensive word anywhere in the outputs (`course.OFFENSIVE`);
    * a progress bar left as a widget (`finalize_widgets` not applied);
    * a figure not shown through `plots.show`, or one with an unlabelled axis, a missing title, small text,
      clipped text or a legend over data (`plots.problems`);
    * in the ``smoke`` profile: a cell tagged ``result`` whose output does not say that its numbers only
      prove the plumbing (`course.note`).
    """
    from speechlm_lib import course, plots

    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        texts = [output_text(o) for o in cell.get("outputs", [])]
        where = f"cell {i + 1}"
        for out, text in zip(cell.get("outputs", []), texts):
            if out.get("output_type") == "error":
                found.append(f"{where}: an error ({out.get('ename')})")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr" and WARNING_RE.search(text):
                found.append(f"{where}: a warning: {text.strip()[:160]!r}")
            elif WARNING_RE.search(text) and re.search(r"\w*Warning:|\[transformers\]|WARNING \|", text):
                found.append(f"{where}: a warning: {text.strip()[:160]!r}")
        bad = course.offensive_words("\n".join(texts))
        if bad:
            found.append(f"{where}: offensive output ({len(bad)} word(s))")
        if "result" in cell.get("metadata", {}).get("tags", []) and profile == "smoke" \
                and not any(course.PLUMBING in t for t in texts):
            found.append(f"{where}: a result cell without the smoke-profile note (course.note())")
    found += [f"cell {i + 1}: a progress widget ({text[:40]!r}); finalize_widgets" for i, text in widget_outputs(nb)]
    for i, info in plots.figure_outputs(nb):
        if info is None:
            found.append(f"cell {i + 1}: a figure not shown through plots.show")
        else:
            found += [f"cell {i + 1}: figure: {p}" for p in plots.problems(info)]
    return found


def publish_run(source: Path, dest: Path) -> list[Path]:
    """Copy the executed notebooks ``source/NN_*.ipynb`` to `dest` (replacing what was there), widgets
    finalised; return the copies. Raises FileNotFoundError when `source` holds none."""
    import nbformat

    found = sorted(Path(source).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"{source}: no executed notebooks (run the tutorial for that profile first)")
    dest = Path(dest)
    if dest.is_dir():
        for old in dest.glob("[0-9][0-9]_*.ipynb"):
            old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in found:
        nb = finalize_widgets(nbformat.read(str(path), as_version=4))
        nbformat.write(nb, str(dest / path.name))
        out.append(dest / path.name)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m speechlm_lib.publish SOURCE DEST``: `publish_run`."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    for p in publish_run(args.source, args.dest):
        print(p)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())


def build_notebook(cells: list[tuple[str, str]], path: str | Path, prefix: str) -> Path:
    """Write a notebook from ``(kind, source)`` cells (kind ``md``, ``code`` or ``result``: a code cell tagged
    ``result``, whose output `problems` checks for a `course.note`), committed without outputs. Cell ids are
    derived from `prefix`, the position and the source's start, so rebuilding an unchanged notebook changes
    nothing (`scripts/build_notebookNN.py` call this)."""
    import hashlib

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, (kind, src) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        if kind == "result":
            cell.metadata["tags"] = ["result"]
        cell.id = hashlib.sha1(f"{prefix}:{i}:{src[:40]}".encode()).hexdigest()[:8]
        nb.cells.append(cell)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return Path(path)
