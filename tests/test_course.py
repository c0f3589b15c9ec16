"""The course as a student meets it: threads, progress, clean outputs, figures, the published run."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from speechlm_lib import config, course, plots, publish, results, tutorial  # noqa: E402
from speechlm_lib.training.callbacks import LivePlot  # noqa: E402


# -- threads -----------------------------------------------------------------------------------
def test_threads_prefer_speechlm_threads_then_omp_then_physical_cores(monkeypatch):
    monkeypatch.delenv("SPEECHLM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert config.threads() == config.physical_cores() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert config.threads() == 3
    monkeypatch.setenv("SPEECHLM_THREADS", "1")
    assert config.threads() == 1
    monkeypatch.setenv("SPEECHLM_THREADS", "zero")
    with pytest.raises(ValueError, match="SPEECHLM_THREADS"):
        config.threads()


def test_set_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("SPEECHLM_THREADS", "1")
    try:
        assert config.set_threads() == 1 and torch.get_num_threads() == 1
        assert config.set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# -- notes and words -------------------------------------------------------------------------
def test_note_says_smoke_numbers_prove_only_the_plumbing_and_quotes_the_reference(monkeypatch, capsys):
    monkeypatch.setenv("SPEECHLM_PROFILE", "smoke")
    course.note(("test WER", "stage1_ctc", "test_wer", "%"))
    text = capsys.readouterr().out
    assert course.PLUMBING in text
    ref = course.reference("stage1_ctc", "test_wer")
    if ref is not None:  # runs/cpu/results.json is committed
        assert f"{100 * ref:.1f} %" in text
    monkeypatch.setenv("SPEECHLM_PROFILE", "cpu")
    course.note(("test WER", "stage1_ctc", "test_wer", "%"))
    assert course.PLUMBING not in capsys.readouterr().out


def test_offensive_words_are_found_and_masked_but_names_are_not():
    text = "The quick round-fuck-stump, over the lazy narg; Dickens met Mr Niggemann in Scunthorpe."
    assert course.offensive_words(text) == ["fuck"]
    assert "fuck" not in course.clean(text) and "Dickens" in course.clean(text)


# -- figures ---------------------------------------------------------------------------------
def test_figure_problems_are_found():
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0, 1, 2], label="a")
    ax.plot([0, 1, 2], [2, 1, 0], label="b")
    ax.legend(loc="center")
    ax.tick_params(labelsize=6)
    found = plots.problems(plots.describe(fig))
    assert any("no title" in p for p in found) and any("no x axis label" in p for p in found)
    assert any("legend covers" in p for p in found) and any("6 pt" in p for p in found)
    ax.set(title="t", xlabel="x (s)", ylabel="y (%)")
    ax.legend(loc="upper center")
    ax.tick_params(labelsize=9)
    assert plots.problems(plots.describe(fig)) == []
    plt.close(fig)


def test_liveplot_puts_loss_and_wer_on_their_own_labelled_axes():
    plots.style()
    live = LivePlot(eval_keys=("dev_loss", "wer"), logy=False, title="training")
    for step in range(1, 11):
        live.on_log(None, step, {"loss": 30.0 - step})
    live.on_eval(None, 10, {"dev_loss": 12.0, "wer": 0.9})
    fig = live.figure()
    info = plots.describe(fig)
    assert plots.problems(info) == []
    assert [a["ylabel"] for a in info["axes"]] == ["loss (nats per token)", "dev WER (%)"]
    assert max(fig.axes[1].get_lines()[0].get_ydata()) == pytest.approx(90.0)  # WER in percent


# -- executed notebooks: widgets, warnings, figures, notes --------------------------------------
def _nb(cells, widgets=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    if widgets:
        nb.metadata["widgets"] = {publish.WIDGET_STATE: {"state": widgets}}
    return nb


def _bar_state(value, total):
    return {"bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
            "l": {"model_name": "HTMLModel", "state": {"value": "train:\u2007100%"}},
            "p": {"model_name": "FloatProgressModel", "state": {"value": value, "max": total}},
            "r": {"model_name": "HTMLModel", "state": {"value": f"\u2007{value}/{total}\u2007[00:12&lt;00:00]"}}}


def test_progress_widgets_become_their_final_text():
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": "train:   0%|          | 0/30", publish.WIDGET_VIEW: {"model_id": "bar"}})]
    nb = publish.finalize_widgets(_nb([cell], _bar_state(30, 30)))
    text = cell.outputs[0]["data"]["text/plain"]
    assert text == "train: 100%|██████████| 30/30 [00:12<00:00]"
    assert "widgets" not in nb.metadata and publish.widget_outputs(nb) == []


def test_problems_name_warnings_offensive_words_widgets_figures_and_missing_notes():
    warn = nbformat.v4.new_code_cell("x")
    warn.outputs = [nbformat.v4.new_output("stream", name="stderr",
                                           text="module.py:1: FutureWarning: `past_key_values` is deprecated\n")]
    rude = nbformat.v4.new_code_cell("x")
    rude.outputs = [nbformat.v4.new_output("stream", name="stdout", text="unpadded The quick round-fuck-stump\n")]
    bar = nbformat.v4.new_code_cell("x")
    bar.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "0%", publish.WIDGET_VIEW: {"model_id": "m"}})]
    fig = nbformat.v4.new_code_cell("x")
    fig.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})]
    result = nbformat.v4.new_code_cell("x", metadata={"tags": ["result"]})
    result.outputs = [nbformat.v4.new_output("stream", name="stdout", text="WER 1.000\n")]
    found = publish.problems(_nb([warn, rude, bar, fig, result]), "smoke")
    for i, what in enumerate(["a warning", "offensive", "progress widget", "not shown through plots.show",
                              "without the smoke-profile note"], 1):
        assert any(p.startswith(f"cell {i}:") and what in p for p in found), (what, found)
    assert not any("smoke-profile note" in p for p in publish.problems(_nb([result]), "cpu"))


def test_committed_notebooks_tag_their_result_cells():
    for path in tutorial.notebooks():
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "result" in c.get("metadata", {}).get("tags", [])]
        assert tagged, f"{path.name}: no cell tagged 'result'"
        assert all("course.note(" in "".join(c["source"]) for c in tagged), path.name


# -- the tutorial runner -----------------------------------------------------------------------
def test_headline_and_clock():
    assert tutorial.clock(75.3) == "1:15" and tutorial.clock(3723) == "1:02:03"
    line = tutorial.headline("stage1_ctc", {"test_wer": 0.5271, "test_cer": 0.1542, "steps": 1000})
    assert line == "stage1_ctc: test_wer 0.527, test_cer 0.154"
    assert tutorial.headline("stage9", {"bleu": 1.0, "test_bleu": 20.5}) == "stage9: test_bleu 20.5"


def test_a_partial_tutorial_run_keeps_the_other_notebooks_times(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLM_RUNS", str(tmp_path))
    tutorial._record_times({"00_a.ipynb": 10.0, "01_b.ipynb": 20.0}, "full", partial=False)
    tutorial._record_times({"01_b.ipynb": 5.0}, "only 01", partial=True)
    metrics = results.load()["stages"]["tutorial"]["metrics"]
    assert metrics == {"notebook_seconds": {"00_a.ipynb": 10.0, "01_b.ipynb": 5.0}, "total_seconds": 15.0,
                       "rerun": ["01_b.ipynb"], "slow_cells": {}}
    tutorial._record_times({"00_a.ipynb": 9.0, "01_b.ipynb": 4.0}, "full", partial=False,
                           cells={"00_a.ipynb": {"cell 2: train()": 40.0}, "01_b.ipynb": {"cell 3: x": 31.0}})
    tutorial._record_times({"01_b.ipynb": 3.0}, "only 01", partial=True, cells={"01_b.ipynb": {}})
    metrics = results.load()["stages"]["tutorial"]["metrics"]
    assert metrics["slow_cells"] == {"00_a.ipynb": {"cell 2: train()": 40.0}, "01_b.ipynb": {}}
    tutorial._record_times({"00_a.ipynb": 9.0, "01_b.ipynb": 4.0}, "full", partial=False)
    assert "rerun" not in results.load()["stages"]["tutorial"]["metrics"]  # a full run starts clean


def _timed(source: str, start: str, end: str | None):
    cell = nbformat.v4.new_code_cell(source)
    if end is not None:
        cell.metadata["execution"] = {"iopub.execute_input": start, "shell.execute_reply": end}
    return cell


def test_slow_cells_come_from_the_executed_notebooks_timing(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"),
                _timed("import torch\nmodel = train()", "2026-12-01T03:00:00.000000Z", "2026-12-01T03:01:05.500000Z"),
                _timed("x = 1", "2026-12-01T03:01:06Z", "2026-12-01T03:01:07Z"),
                _timed("never ran", "", None),
                _timed("# a comment\nscores = evaluate()", "2026-12-01T03:01:07Z", "2026-12-01T03:03:07Z")]
    assert tutorial.cell_seconds(nb) == [(5, 120.0, "scores = evaluate()"), (2, 65.5, "model = train()"),
                                         (3, 1.0, "x = 1")]
    path = tmp_path / "01_t.ipynb"
    nbformat.write(nb, str(path))
    assert tutorial.slow_cells(path, at_least=30) == {"cell 5: scores = evaluate()": 120.0, "cell 2: model = train()": 65.5}
    assert tutorial.print_slow_cells(tmp_path) == 0
    printed = capsys.readouterr().out
    assert "01_t.ipynb: 3:06 in 2 cells" in printed and "2:00  cell 5" in printed
    assert tutorial.print_slow_cells(tmp_path / "none") == 1


@pytest.mark.slow
def test_a_failing_cell_names_the_notebook_and_cell_and_the_progress_is_printed(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("raise ValueError('boom at the end')")]
    path = tmp_path / "07_broken.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(tutorial.CellFailed) as err:
        tutorial.execute(path, tmp_path / "out" / path.name, timeout=120, progress=True)
    assert "07_broken.ipynb: cell 3 of 3 failed" in str(err.value) and "boom at the end" in str(err.value)
    assert "raise ValueError" in str(err.value)
    printed = capsys.readouterr().out
    assert "07_broken.ipynb  cell 2/3" in printed and "07_broken.ipynb  cell 3/3" in printed
    assert (tmp_path / "out" / path.name).is_file()  # the executed copy is kept for reading
