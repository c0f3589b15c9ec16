"""Manifests: round trip, relative paths, bad lines skipped and named, results.json."""
import json

import pytest

from speechlm_lib import results
from speechlm_lib.data.records import Report, Utterance, read_manifest, write_manifest


def test_round_trip_relative(tmp_path):
    utts = [Utterance(id="a", audio=str(tmp_path / "audio" / "a.wav"), text="hi", keywords=["Zbig"], translation="hallo")]
    p = write_manifest(tmp_path / "m.jsonl", utts, relative_to=tmp_path)
    row = json.loads(p.read_text())
    assert row["audio"] == "audio/a.wav"
    back = read_manifest(p)
    assert back == utts


def test_bad_lines_are_skipped_and_named(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"audio": "a.wav", "text": "ok"}\nnot json\n{"text": "no audio"}\n\n{"audio": "b.wav", "text": "ok2"}\n')
    report = Report()
    utts = read_manifest(p, report)
    assert [u.id for u in utts] == ["a", "b"]
    assert report.kept == 2
    assert [item.rsplit(":", 1)[1] for item, _ in report.skipped] == ["2", "3"]
    assert "missing field(s) audio" in report.skipped[1][1]


def test_missing_manifest_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_results_record_merges(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLM_RUNS", str(tmp_path))
    monkeypatch.setenv("SPEECHLM_PROFILE", "smoke")
    results.record("s1", {"wer": 0.123456}, command="make x")
    results.record("s1", {"cer": 0.05}, seconds=3.21)
    data = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert data["stages"]["s1"]["metrics"] == {"wer": 0.1235, "cer": 0.05}
    assert data["stages"]["s1"]["command"] == "make x" and data["stages"]["s1"]["seconds"] == 3.2
    results.record("s2", {"x": 1})
    results.record("s1", {"loss": 2.0}, command="make y", replace=True)  # a new run: the old figures go
    data = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert data["stages"]["s1"]["metrics"] == {"loss": 2.0} and "seconds" not in data["stages"]["s1"]
    assert data["stages"]["s2"]["metrics"] == {"x": 1}


def test_results_report_prints_then_records_the_command_as_typed(tmp_path, monkeypatch, capsys):
    import sys
    import time

    monkeypatch.setenv("SPEECHLM_RUNS", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_x.py", "--profile", "smoke", "--set", "a=(0, 1)"])
    results.record("bench_x", {"old": 1.0}, profile_name="smoke")
    results.report("bench_x", {"wer": 0.25, "cpu": "Xeon"}, time.perf_counter() - 2.0, profile_name="smoke",
                   runs={"a": [1, 2]})
    out = capsys.readouterr().out
    assert "wer" in out and "0.2500" in out and "Xeon" in out
    entry = json.loads((tmp_path / "smoke" / "results.json").read_text())["stages"]["bench_x"]
    assert entry["metrics"] == {"wer": 0.25, "cpu": "Xeon"}  # the earlier run's figures are gone
    assert entry["command"].endswith("benchmarks/bench_x.py --profile smoke --set 'a=(0, 1)'")
    assert entry["seconds"] >= 2.0 and entry["runs"] == {"a": [1, 2]}
