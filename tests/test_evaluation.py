"""The evaluation module: records and alignment, bootstrap intervals, breakdowns by manifest extras, the guards,
noise at a given SNR, the explorer's callbacks (headless), the systems' common interface."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from speechlm_lib.data.records import Utterance, read_manifest, write_manifest
from speechlm_lib.evaluation.aggregate import bootstrap_wer, breakdown, corpus_wer, paired_bootstrap, summarize
from speechlm_lib.evaluation.analysis import fixed_and_broke, insertions, substitutions
from speechlm_lib.evaluation.guards import GuardConfig, cut_repetitions, guard, word_cap
from speechlm_lib.evaluation.records import UttRecord, align, alignment_html
from speechlm_lib.evaluation.run import evaluate
from speechlm_lib.evaluation.systems import SYSTEMS, System, SystemUnavailable
from speechlm_lib.metrics import wer


def _rec(ref, hyp, uid="u", keywords=(), **meta):
    u = Utterance(id=uid, audio=f"{uid}.wav", text=ref, keywords=list(keywords), extra=meta)
    return UttRecord.make(u, hyp)


class Echo(System):
    """A fake system: the hypothesis is the utterance's text with its first word dropped, plus the keywords;
    or a loop, for utterances whose id says so."""

    name = "echo"
    keywords = True

    def _run(self, utts, waves, keywords, instruction):
        out = []
        for u in utts:
            if "loop" in u.id:
                out.append("thank you " * 20)
            else:
                out.append(" ".join(u.text.split()[1:] + list(keywords or [])))
        return out


@pytest.fixture
def tones(tmp_path):
    utts = []
    texts = ["hello big world", "the quick brown fox", "tiny words here", "hallo welt"]
    for i, text in enumerate(texts):
        path = write_tone(tmp_path / f"t{i}.wav", seconds=1.0 + 0.25 * i, freq=300 + 100 * i)
        utts.append(Utterance(id=f"t{i}", audio=str(path), text=text, duration=1.0 + 0.25 * i,
                              speaker="a" if i % 2 else "b", language="de" if i == 3 else "en",
                              keywords=["hello"] if i == 0 else [], extra={"gender": "f" if i % 2 else "m"}))
    return utts


# ----- Utterance keeps a manifest's extra fields -----------------------------------------------------------
def test_manifest_extras_round_trip(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"audio": "a.wav", "text": "hi", "speaker": "s1", "age": 7, "gender": "f"}\n'
                 '{"audio": "b.wav", "text": "ho"}\n')
    a, b = read_manifest(p)
    assert a.extra == {"age": 7, "gender": "f"} and b.extra == {}
    assert json.loads(a.to_json())["age"] == 7 and "extra" not in json.loads(a.to_json())
    assert "extra" not in json.loads(b.to_json()) and set(json.loads(b.to_json())) == {
        "id", "audio", "text", "speaker", "duration", "language", "keywords", "translation"}
    back = read_manifest(write_manifest(tmp_path / "n.jsonl", [a, b], relative_to=tmp_path))
    assert back == [a, b]


# ----- records and alignment -------------------------------------------------------------------------------
def test_alignment_ops_and_counts():
    ops = align("The cat sat down.", "the hat sat um")
    assert ops == [("equal", "the", "the"), ("sub", "cat", "hat"), ("equal", "sat", "sat"), ("sub", "down", "um")]
    r = _rec("the cat sat", "the cat cat sat on")
    assert (r.count("ins"), r.ref_words, r.errors) == (2, 3, 2)
    assert _rec("a b c", "a c").ops == [("equal", "a", "a"), ("del", "b", None), ("equal", "c", "c")]
    assert _rec("", "noise").ops == [("ins", None, "noise")]
    html = alignment_html(align("a b c", "a x c d"))
    assert "#f4b400" in html and "#4285f4" in html and "#db4437" not in html


def test_keyword_hits_and_biased_wer():
    r = _rec("meet Zbigniew at noon", "meet big new at noon", keywords=["Zbigniew"])
    assert r.keyword_hits() == {"Zbigniew": False}
    c = r.biased_counts()
    assert (c["b_words"], c["b_errors"]) == (1, 1)  # the keyword was substituted
    assert (c["u_words"], c["u_errors"]) == (3, 1)  # and one word inserted next to it
    s = summarize([r, _rec("hello there", "hello there", uid="v")])
    assert s["b_wer"] == 1.0 and s["u_wer"] == pytest.approx(1 / 5)
    assert s["wer"] == pytest.approx(wer([r.reference, "hello there"], [r.hypothesis, "hello there"]))


# ----- bootstrap intervals ---------------------------------------------------------------------------------
def _system(n, seed, rate=0.3):
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    out = []
    for i in range(n):
        ref = " ".join(rng.choice(words, 6))
        hyp = " ".join(w if rng.random() > rate else "x" for w in ref.split())
        out.append(_rec(ref, hyp, uid=f"u{i}"))
    return out


def test_bootstrap_contains_estimate_narrows_and_is_deterministic():
    small, large = _system(20, 0), _system(400, 0)
    lo, hi = bootstrap_wer(small)
    assert lo <= corpus_wer(small) <= hi and lo < hi
    lo2, hi2 = bootstrap_wer(large)
    assert lo2 <= corpus_wer(large) <= hi2
    assert hi2 - lo2 < (hi - lo) / 2  # 20x the data: about 1/sqrt(20) the width
    assert bootstrap_wer(small, seed=3) == bootstrap_wer(small, seed=3)
    assert bootstrap_wer(small, seed=3) != bootstrap_wer(small, seed=4)


def test_paired_bootstrap_tells_the_better_system():
    a = _system(200, 1, rate=0.4)
    same = paired_bootstrap(a, a)
    assert same["delta"] == 0 and same["low"] == same["high"] == 0 and same["b_better"] == 0
    fixed = [_rec(r.reference, r.reference, uid=r.id) for r in a[:100]] + a[100:]
    better = paired_bootstrap(a, fixed)
    assert better["delta"] < 0 and better["high"] < 0 and better["b_better"] > 0.99
    assert same["ratio"] == same["ratio_low"] == same["ratio_high"] == 1
    assert better["ratio"] == pytest.approx(corpus_wer(fixed) / corpus_wer(a))
    assert better["ratio_low"] < better["ratio"] < better["ratio_high"] < 1
    with pytest.raises(ValueError, match="share no utterance"):
        paired_bootstrap(a, [_rec("x", "x", uid="other")])


def test_breakdown_by_a_manifest_extra_and_derived_fields(tmp_path):
    p = tmp_path / "m.jsonl"
    rows = [{"id": f"u{i}", "audio": f"u{i}.wav", "text": "one two three four", "speaker": f"s{i % 3}",
             "gender": "f" if i % 2 else "m", "age": 6 if i < 4 else 30} for i in range(8)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = read_manifest(p)
    hyps = ["one two three four" if u.extra["gender"] == "f" else "one two" for u in utts]  # m: 2 of 4 deleted
    records = [UttRecord.make(u, h) for u, h in zip(utts, hyps)]
    by_gender = breakdown(records, "gender").set_index("gender")
    assert by_gender.loc["f", "wer"] == 0 and by_gender.loc["m", "wer"] == 0.5
    assert by_gender.loc["m", "utterances"] == 4 and by_gender.loc["m", "wer_low"] <= 0.5 <= by_gender.loc["m", "wer_high"]
    ages = breakdown(records, "age_group").set_index("age_group")
    assert list(ages.index) == ["adult (18+)", "child (<12)"] and ages["utterances"].sum() == 8
    synth = [_rec("a b", "a b", uid="x", speaker="en-gb-scotland+f5_p65_r150")]
    assert breakdown(synth, "accent")["accent"].tolist() == ["en-gb-scotland"]
    assert breakdown(synth, "voice_gender")["voice_gender"].tolist() == ["f"]


# ----- guards ----------------------------------------------------------------------------------------------
def test_repetition_guard():
    assert cut_repetitions("thank you thank you thank you thank you thank you bye") == "thank you thank you thank you"
    assert cut_repetitions("no no no no no") == "no no no"
    text = "the cat sat on the mat and the dog sat on the log"
    assert cut_repetitions(text) == text  # repeats that are not a run stay
    assert cut_repetitions("yes, yes. Yes yes and more") == "yes, yes. Yes"  # case and punctuation ignored
    out, changed = guard("word " * 50, seconds=1.0)
    assert changed and len(out.split()) <= word_cap(1.0, GuardConfig())
    assert guard("a fine short answer", seconds=2.0) == ("a fine short answer", False)


def test_system_applies_guards_and_skips_bad_audio(tones, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    loop = Utterance(id="loop", audio=tones[0].audio, text="thanks", duration=1.0)
    utts = [tones[0], loop, Utterance(id="bad", audio=str(bad), text="x")]
    out = Echo(batch_size=2).decode(utts)
    assert out.texts[0] == "big world" and out.texts[1] == "thank you thank you thank you"
    assert out.texts[2] == "" and out.skipped.skipped[0][0] == "bad" and out.skipped.kept == 2
    assert out.guarded == 1 and all(s > 0 for s in out.seconds[:2]) and out.seconds[2] == 0


def test_whisper_gets_a_token_budget_tied_to_the_audio(tones, monkeypatch):
    seen = {}

    def fake(model, processor, waves, batch_size=8, max_new_tokens=None, **kw):
        seen.setdefault("budgets", []).append(max_new_tokens)
        return ["x"] * len(waves), 0.0

    monkeypatch.setattr("speechlm_lib.decoding.whisper.whisper_transcribe", fake)
    system = SYSTEMS.build("whisper", model=object(), processor=object(), batch_size=1)
    system.decode(tones[:2])
    g = GuardConfig()
    assert seen["budgets"] == [int(np.ceil(g.tokens_per_second * 1.25 + g.extra_tokens)),
                               int(np.ceil(g.tokens_per_second * 1.0 + g.extra_tokens))]


def test_whisper_is_told_the_language_and_each_model_meets_the_whisper_it_listens_through(tones, monkeypatch):
    from types import SimpleNamespace

    from speechlm_lib.experiments.real_speech import WHISPERS, whisper_of

    seen = []

    def fake(model, processor, waves, language=None, **kw):
        seen.append(language)
        return [""] * len(waves), 0.0

    monkeypatch.setattr("speechlm_lib.decoding.whisper.whisper_transcribe", fake)
    SYSTEMS.build("whisper", model=object(), processor=object(), language="en").decode(tones[:1])
    SYSTEMS.build("whisper", model=object(), processor=object()).decode(tones[:1])
    assert seen == ["en", None]  # a multilingual Whisper is told English; by default it detects
    base = SimpleNamespace(encoder=SimpleNamespace(name="whisper", reference=WHISPERS["base"]))
    conformer = SimpleNamespace(encoder=SimpleNamespace(name="conformer", reference="runs/cpu/stage1_encoder"))
    assert whisper_of(base) == "openai/whisper-base" and whisper_of(conformer) == WHISPERS["tiny.en"]


# ----- evaluate, analysis ----------------------------------------------------------------------------------
def test_evaluate_scores_the_task_and_counts_what_it_leaves_out(tones):
    ev = evaluate(Echo(), tones, "tones", keywords=["big"])
    assert len(ev.records) == 3 and ev.skipped.skipped == [("t3", "task asr_en does not apply (language de)")]
    refs = [u.text for u in tones[:3]]
    assert ev.summary["wer"] == pytest.approx(wer(refs, [r.hypothesis for r in ev.records]))
    assert ev.ci[0] <= ev.summary["wer"] <= ev.ci[1]
    assert ev.summary["peak_mb"] > 0 and ev.summary["rtf"] > 0 and ev.row()["system"] == "echo"
    assert ev.records[0].biasing == ["big"] and ev.records[0].meta["gender"] == "m"
    assert ev.table().loc[0, "del"] == 1


def test_error_analysis():
    recs = [_rec("the cat sat", "the hat sat", uid="a"), _rec("a cat here", "a hat here um um um", uid="b")]
    assert substitutions(recs).iloc[0].to_dict() == {"reference": "cat", "hypothesis": "hat", "count": 2}
    common, odd = insertions(recs)
    assert common.iloc[0].to_dict() == {"word": "um", "count": 3} and odd["id"].tolist() == ["b"]
    projector = [_rec("the cat sat", "the hat sad", uid="a")]
    llm = [_rec("the cat sat", "a hat sat", uid="a")]
    out = fixed_and_broke(projector, llm)
    assert (out["fixed"], out["broke"], out["both_wrong"], out["words"]) == (1, 1, 1, 3)


# ----- noise -----------------------------------------------------------------------------------------------
def test_noisy_copies_hit_the_target_snr(tones, tmp_path):
    from speechlm_lib.evaluation.noise import measured_snr, noisy_copies

    for snr in (20, 5):
        noisy = noisy_copies(tones[:2], snr, out_dir=tmp_path / "noisy")
        assert [u.extra["snr_db"] for u in noisy] == [snr, snr] and noisy[0].text == tones[0].text
        clean, _ = sf.read(tones[0].audio, dtype="float32")
        got, _ = sf.read(noisy[0].audio, dtype="float32")
        assert measured_snr(clean, got) == pytest.approx(snr, abs=0.5)
    again = noisy_copies(tones[:1], 5, out_dir=tmp_path / "noisy")
    assert sf.read(again[0].audio, dtype="float32")[0].tolist() == got.tolist()  # the same noise every time


# ----- the explorer, headless ------------------------------------------------------------------------------
def test_explorer_callbacks(tones):
    pytest.importorskip("ipywidgets")
    from speechlm_lib.evaluation.explorer import ALL, Explorer

    built = []

    def echo():
        built.append("echo")
        return Echo()

    class Perfect(Echo):
        name = "perfect"
        keywords = False

        def _run(self, utts, waves, keywords, instruction):
            return [u.text for u in utts]

    ex = Explorer({"tones": tones[:3], "one": tones[:1]}, {"echo": echo, "perfect": Perfect})
    assert len(ex.utt_box.options) == 3 and ex.utt_box.value == ex.utt_box.options[0][1]
    assert "#db4437" in ex.align_html.value and ex.audio.value  # a deletion shown, the audio loaded
    ex.speaker_box.value = "a"
    assert [v for _, v in ex.utt_box.options] == ["t1"]
    ex.speaker_box.value = ALL
    ex.misses_box.value = True
    assert [v for _, v in ex.utt_box.options] == ["t0"]  # "hello" was dropped from "hello big world"
    ex.utt_box.value = "t0"
    ex.keywords_text.value = "hello, big"
    new = ex.on_redecode()
    assert new.hypothesis == "big world hello big" and new.keyword_hits() == {"hello": True}
    assert "re-decoded with [hello, big]" in ex.align_html.value
    ex.redecode_button.click()  # the button runs the same callback
    ex.misses_box.value = False
    ex.model_box.value = "perfect"
    ex.errors_box.value = True
    assert ex.utt_box.options == () and "no utterance" in ex.align_html.value
    ex.set_box.value = "one"
    ex.errors_box.value = False
    assert [v for _, v in ex.utt_box.options] == ["t0"] and built == ["echo"]


# ----- the speech-LLM and faster-whisper behind the same interface -----------------------------------------
def test_speechlm_system_puts_keywords_in_the_prompt(tones, tmp_path):
    import torch

    from speechlm_lib.models.build import ModelConfig, build_speechlm
    from speechlm_lib.models.encoders import ENCODERS
    from speechlm_lib.models.tiny_models import save_tiny_wav2vec2, tiny_llm

    llm, tok = tiny_llm()
    enc_dir = str(save_tiny_wav2vec2(tmp_path / "w2v"))
    cfg = ModelConfig(encoder="wav2vec2", encoder_source=enc_dir, projector="ctc", stride=2,
                      projector_kwargs={"hidden": 32, "hard": True, "dropout": 0.0})
    torch.manual_seed(0)
    model = build_speechlm(cfg, encoder=ENCODERS.build("wav2vec2", source=enc_dir), llm=llm, tokenizer=tok,
                           texts=["hello world", "tiny words here"])
    system = SYSTEMS.build("speechlm", model=model)
    # the list goes in front of the instruction, in the line stage 4's ICT trains with
    assert system.instruction(["Zbig", "Ng"]) == f"Names that may occur: Zbig, Ng. {model.prompts.config.instruction}"
    out = system.decode(tones[:2], keywords=["Zbig"])
    prompts = list(model.prompts._cache)
    assert any(p.startswith("Names that may occur: Zbig. ") for p in prompts)  # the decoder was asked with the list
    assert len(out.texts) == 2 and all(len(t.split()) <= word_cap(2.0, GuardConfig()) for t in out.texts)
    projector = SYSTEMS.build("projector", model=model).decode(tones[:2])
    assert len(projector.texts) == 2
    # the n-best rescored by the LLM (decoding.ctc_rescore has the logic's tests): the same interface
    from speechlm_lib.decoding.ctc_rescore import RescoreConfig

    rescored = SYSTEMS.build("rescored", model=model, rescore=RescoreConfig(beam=4, lm_weight=0.5)).decode(tones[:2])
    assert len(rescored.texts) == 2 and all(len(t.split()) <= word_cap(2.0, GuardConfig()) for t in rescored.texts)
    # refilled batches: the system hands `transcribe` every utterance at once, with the same answers
    calls = []
    plain = SYSTEMS.build("speechlm", model=model, batch_size=2)
    refill = SYSTEMS.build("speechlm", model=model, batch_size=2, refill_at=1)
    refill._run = lambda utts, *a, f=refill._run: calls.append(len(utts)) or f(utts, *a)
    assert refill.decode(tones).texts == plain.decode(tones).texts and calls == [len(tones)]


def test_faster_whisper_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    with pytest.raises(SystemUnavailable, match="pip install"):
        SYSTEMS.build("faster_whisper")


def test_the_speed_comparison_says_faster_whisper_is_absent_before_starting_anything(monkeypatch):
    import importlib.util

    from speechlm_lib.evaluation import isolated
    from speechlm_lib.evaluation.speed import against_faster_whisper

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "faster_whisper" else real(name, *a))
    monkeypatch.setattr(isolated, "Isolated", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(SystemUnavailable, match="faster-whisper is not installed"):
        against_faster_whisper("runs/cpu/stage3_lora", [])


@pytest.mark.slow
def test_faster_whisper_batches_clips_one_a_segment(tones):
    pytest.importorskip("faster_whisper")
    try:
        system = SYSTEMS.build("faster_whisper", batch_size=4, threads=1)
    except SystemUnavailable as e:
        pytest.skip(str(e))
    out = system.decode(tones)
    assert len(out.texts) == 4 and all(isinstance(t, str) for t in out.texts) and out.total_seconds > 0


# ----- the notebook's suite: one build for consecutive specs, noisy sets for the named systems, shared encoder --
def test_course_specs_give_noisy_sets_only_to_the_named_systems(tmp_path):
    from speechlm_lib.evaluation.suite import NOISY_SYSTEMS, course_specs

    full = {s.label: s.sets for s in course_specs(tmp_path, ("synthetic",), ("snr5",))}
    assert {k for k, v in full.items() if "snr5" in v} == set(NOISY_SYSTEMS)
    one = {s.label: s.sets for s in course_specs(tmp_path, ("synthetic",), ("snr5",), noisy_for=("stage 3",))}
    assert {k for k, v in one.items() if "snr5" in v} == {"stage 3"} and one["faster-whisper int8"] == ("synthetic",)


def test_run_suite_builds_consecutive_specs_of_one_system_once(tones, monkeypatch):
    from speechlm_lib.evaluation import suite
    from speechlm_lib.evaluation.suite import Spec, run_suite

    built = []

    def build(name, **options):
        built.append((name, options.get("tag")))
        return Echo()

    monkeypatch.setattr(suite.SYSTEMS, "build", build)
    specs = [Spec("a", "echo", {"tag": 1}), Spec("a + list", "echo", {"tag": 1}, with_list=True),
             Spec("b", "echo", {"tag": 2}, sets=("one",)), Spec("gone", "echo", {"folder": "/no/such/folder"})]
    said = []
    evals = run_suite(specs, {"one": tones[:2], "two": tones[2:3]}, say=said.append)
    assert built == [("echo", 1), ("echo", 2)]
    assert sorted(evals) == [("a", "one"), ("a", "two"), ("a + list", "one"), ("a + list", "two"), ("b", "one")]
    assert evals[("a + list", "one")].system == "a + list" and evals[("a", "one")].system == "a"
    assert "hello" in evals[("a + list", "one")].records[1].hypothesis.split() + \
        evals[("a + list", "one")].records[0].hypothesis.split()  # the list reached the decoder
    assert any(line.startswith("gone: skipped") for line in said)


def test_load_speechlm_shares_a_frozen_encoder_it_does_not_save(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from speechlm_lib.evaluation.systems import load_speechlm
    from speechlm_lib.models import speechlm as sl

    calls = []

    class Loaded:
        def __init__(self, encoder):
            self.encoder = encoder if encoder is not None else object()

    def fake(directory, encoder=None, **kw):
        calls.append(encoder)
        return Loaded(encoder)

    monkeypatch.setattr(sl.SpeechLM, "from_pretrained", staticmethod(fake))
    folders = {}
    for name, frozen, parts in (("a", True, ["projector.w"]), ("b", True, ["projector.w"]),
                                ("c", False, ["projector.w", "encoder.w"])):
        d = tmp_path / name
        d.mkdir()
        (d / sl.CONFIG_NAME).write_text(json.dumps({"encoder": {"name": "enc"}, "freeze_encoder": frozen}))
        save_file({k: torch.zeros(1) for k in parts}, str(d / sl.WEIGHTS_NAME))
        folders[name] = d
    shared = {}
    a = load_speechlm(folders["a"], shared)
    b = load_speechlm(folders["b"], shared)
    c = load_speechlm(folders["c"], shared)
    assert calls[0] is None and b.encoder is a.encoder and calls[2] is None and c.encoder is not a.encoder
    assert load_speechlm(folders["a"]).encoder is not a.encoder  # no dict, nothing shared
    f32 = load_speechlm(folders["b"], shared, encoder_options={"dtype": "float32"})
    assert f32.encoder is not a.encoder  # an encoder built with other options is not the shared one


def test_from_pretrained_builds_the_saved_encoder_with_the_options_changed(tmp_path, monkeypatch):
    """`encoder_options` changes the saved encoder's builder options (the rest kept); none: as saved."""
    from speechlm_lib.models import speechlm as sl

    seen = []

    def build(name, **kw):
        seen.append((name, kw))
        raise RuntimeError("built")  # enough: the options are what is under test

    monkeypatch.setattr(sl.ENCODERS, "build", build)
    (tmp_path / sl.CONFIG_NAME).write_text(json.dumps({"encoder": {
        "encoder": "whisper", "name": "openai/whisper-tiny.en", "options": {"pad_to_30s": False, "dtype": "auto"}}}))
    for options in (None, {"dtype": "float32"}):
        with pytest.raises(RuntimeError, match="built"):
            sl.SpeechLM.from_pretrained(tmp_path, encoder_options=options)
    assert seen == [("whisper", {"source": "openai/whisper-tiny.en", "pad_to_30s": False, "dtype": "auto"}),
                    ("whisper", {"source": "openai/whisper-tiny.en", "pad_to_30s": False, "dtype": "float32"})]


def test_explorer_seeded_with_records_decodes_nothing_and_cleans_hypotheses(tones):
    pytest.importorskip("ipywidgets")
    from speechlm_lib.evaluation.explorer import Explorer

    def never():
        raise AssertionError("the seeded set must not be decoded again")

    rude = UttRecord.make(tones[0], "hello shit world")
    ex = Explorer({"tones": tones[:1]}, {"echo": never}, records={("tones", "echo"): [rude]})
    assert [v for _, v in ex.utt_box.options] == ["t0"]
    assert "shit" not in ex.align_html.value and "****" in ex.align_html.value
