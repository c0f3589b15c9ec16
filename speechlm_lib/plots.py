"""Figures worth looking at: one style for the course, a check of every figure, and `show`.

Every figure a notebook shows goes through `show(fig)`, which checks it (`problems`) and displays
it with its description in the output's metadata (``speechlm_figure``), so a test can read the
executed notebooks and refuse any figure with an unlabelled axis, a missing title, text under
`MIN_FONT` points, text outside the canvas or a legend drawn over data.

The rules: every axis labelled (with its unit where there is one: ``"time (s)"``, ``"WER (%)"``),
one quantity an axis (a loss and a WER get two panels, not one axis), a title on every panel,
legends clear of the data, no text smaller than 8 pt.
"""
from __future__ import annotations

METADATA_KEY = "speechlm_figure"
MIN_FONT = 8.0

STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "figure.titlesize": 12, "axes.grid": True, "grid.alpha": 0.3,
    "figure.constrained_layout.use": True, "legend.framealpha": 0.9,
}


def style() -> None:
    """Apply the course's matplotlib style (readable fonts, light grid, constrained layout)."""
    import matplotlib as mpl

    mpl.rcParams.update(STYLE)


def _colorbar_axes(fig) -> set:
    return {ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None}


def _texts(fig) -> tuple[list, list]:
    """(every visible text, those placed by hand: titles, axis labels, legends, annotations)."""
    placed = [fig._suptitle] if getattr(fig, "_suptitle", None) is not None else []
    ticks = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        placed += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            placed += list(ax.get_legend().get_texts())
        ticks += [*ax.get_xticklabels(), *ax.get_yticklabels()]
    keep = [t for t in placed if t.get_visible() and t.get_text().strip()]
    return keep + [t for t in ticks if t.get_visible() and t.get_text().strip()], keep


def _legend_overlap(ax, renderer) -> int:
    """How many data points (line vertices, scatter points) and bars lie under the axes' legend."""
    legend = ax.get_legend()
    if legend is None or not legend.get_visible():
        return 0
    box = legend.get_window_extent(renderer)
    hits = 0
    for line in ax.get_lines():
        xy = line.get_xydata()
        if len(xy):
            pts = line.get_transform().transform(xy)
            hits += int(sum(box.contains(x, y) for x, y in pts))
    for coll in ax.collections:
        offsets = coll.get_offsets()
        if len(offsets) and coll.get_offset_transform() is not None:
            pts = coll.get_offset_transform().transform(offsets)
            hits += int(sum(box.contains(x, y) for x, y in pts))
    for patch in ax.patches:
        ext = patch.get_window_extent(renderer)
        if ext.width > 0 and ext.height > 0 and ext.overlaps(box):
            hits += 1
    return hits


def describe(fig) -> dict:
    """What `problems` checks, as plain data: each panel's title and labels, colour bars' labels,
    points under legends, the smallest font and any text outside the canvas."""
    if not hasattr(fig.canvas, "get_renderer"):  # a closed figure: draw it on an Agg canvas
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bars = _colorbar_axes(fig)
    axes = []
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        entry = {"title": ax.get_title() or ax.get_title(loc="left"), "xlabel": ax.get_xlabel(),
                 "ylabel": ax.get_ylabel(), "colorbar": ax in bars, "legend_overlap": _legend_overlap(ax, renderer)}
        axes.append(entry)
    clipped = []
    canvas = fig.bbox
    every, placed = _texts(fig)
    sizes = [float(t.get_fontsize()) for t in every]
    for t in placed:
        ext = t.get_window_extent(renderer)
        if ext.width and (ext.x0 < canvas.x0 - 1 or ext.x1 > canvas.x1 + 1 or ext.y0 < canvas.y0 - 1
                          or ext.y1 > canvas.y1 + 1):
            clipped.append(t.get_text()[:40])
    suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    return {"suptitle": suptitle, "axes": axes, "min_font": min(sizes) if sizes else None, "clipped": clipped}


def problems(info: dict) -> list[str]:
    """What is wrong with a figure described by `describe` (empty: nothing)."""
    out = []
    if not info.get("axes"):
        out.append("no axes")
    for i, ax in enumerate(info.get("axes", [])):
        where = f"panel {i + 1}" + (f" ({ax['title']!r})" if ax.get("title") else "")
        if ax.get("colorbar"):
            if not (ax.get("xlabel") or ax.get("ylabel")):
                out.append(f"{where}: colour bar without a label")
            continue
        if not ax.get("title") and not info.get("suptitle"):
            out.append(f"{where}: no title")
        for key in ("xlabel", "ylabel"):
            if not ax.get(key):
                out.append(f"{where}: no {key[0]} axis label")
        if ax.get("legend_overlap"):
            out.append(f"{where}: the legend covers {ax['legend_overlap']} data point(s)")
    if info.get("min_font") is not None and info["min_font"] < MIN_FONT:
        out.append(f"text of {info['min_font']:g} pt (the least is {MIN_FONT:g} pt)")
    for text in info.get("clipped", []):
        out.append(f"text outside the canvas: {text!r}")
    return out


def show(fig, display_id: str | bool | None = None):
    """Display `fig` in a notebook with its description in the output's metadata, then close it.

    Returns the display handle when `display_id` is given (``True``: a new one), for in-place updates
    through `update`. Outside a notebook it does nothing but close the figure."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        if ax.images:  # a grid over an image (spectrogram, posteriors) only hides it
            ax.grid(False)
    info = describe(fig)
    handle = None
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            handle = display(fig, metadata={METADATA_KEY: info}, display_id=display_id)
    finally:
        plt.close(fig)
    return handle


def update(handle, fig) -> None:
    """Replace the figure shown under `handle` (from `show(fig, display_id=True)`) by `fig`."""
    import matplotlib.pyplot as plt

    try:
        handle.update(fig, metadata={METADATA_KEY: describe(fig)})
    finally:
        plt.close(fig)


def figure_outputs(nb: dict) -> list[tuple[int, dict | None]]:
    """``(cell index, description or None)`` of every image output of an executed notebook."""
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                found.append((i, out.get("metadata", {}).get(METADATA_KEY)))
    return found
