"""Stage 4 with tiny random models: keyword context, ICT lists, biasing lists, biasing metrics, bad lists."""
from __future__ import annotations

import random
import warnings

import pytest
import torch

from conftest import save_tiny_parts, tiny_ctc_speechlm, write_noise
from speechlm_lib.data.records import Utterance
from speechlm_lib.decoding.generation import DecodeConfig, transcribe
from speechlm_lib.metrics_bias import biasing_scores, example_rows
from speechlm_lib.models.context import (ContextTooLong, ICTConfig, ICTSampler, biasing_lists, clean_list,
                                         context_text, context_tokens, fit_context, unseen_pool, with_context)
from speechlm_lib.models.lora import lora_parameters
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.models.tiny_models import tiny_tokenizer
from speechlm_lib.recipes.stage4_context import (BiasEvalConfig, Stage4Config, evaluate_biasing, load_stage3,
                                                 make_ict_dataset, train_ict)
from speechlm_lib.training.trainer import TrainConfig

TEXTS = ["call kowalczyk now", "meet barillaro in town", "hello world", "ask ijzerman twice"]
KEYWORDS = [["Kowalczyk"], ["Barillaro"], [], ["Ijzerman"]]
POOL = ["Slouvrein", "Bozerk", "Vrabapol", "Tinte", "Erkelenz", "Rozalia", "Sadri", "Olsen"]


# ----- the context line -------------------------------------------------------------------------------------
def test_context_is_cleaned_and_goes_in_front_of_the_instruction():
    assert clean_list([" Kowalczyk ", "kowalczyk", "", "Barillaro", "KOWALCZYK", "O'Brien\n"]) == \
        ["Kowalczyk", "Barillaro", "O'Brien"]
    assert with_context("Transcribe the audio.", ["B", "A"]) == "Names that may occur: B, A. Transcribe the audio."
    assert with_context("Transcribe the audio.", []) == "Transcribe the audio."  # an empty list: no context
    assert with_context("Transcribe the audio.", None) == "Transcribe the audio."
    assert context_text(["  ", ""]) == ""


def test_emoji_and_cjk_keywords_cost_more_tokens_but_work():
    tok = tiny_tokenizer()
    latin, odd = context_tokens(tok, ["Anna"]), context_tokens(tok, ["東京🙂"])
    assert odd > latin  # a byte-level tokenizer spends several ids a character
    assert tok.decode(tok(context_text(["東京🙂"]))["input_ids"]) == "Names that may occur: 東京🙂."


# ----- ICT training lists -----------------------------------------------------------------------------------
def test_ict_sampler_follows_its_probability_positive_ratio_and_lengths():
    sampler = ICTSampler(ICTConfig(probability=0.7, positive_ratio=0.6, min_distractors=2, max_distractors=5), POOL)
    rng, got, kept, own = random.Random(0), 0, 0, 0
    for _ in range(3000):
        words = sampler(["Kowalczyk", "Barillaro"], rng)
        if words is None:
            continue
        got += 1
        positives = [w for w in words if w in ("Kowalczyk", "Barillaro")]
        kept, own = kept + len(positives), own + 2
        assert 2 <= len(words) - len(positives) <= 5 and set(words) - {"Kowalczyk", "Barillaro"} <= set(POOL)
    assert abs(got / 3000 - 0.7) < 0.03 and abs(kept / own - 0.6) < 0.03
    orders = {tuple(sampler(["Kowalczyk"], random.Random(s)) or ()) for s in range(50)}
    assert len(orders) > 10  # length and order vary
    with pytest.raises(ValueError, match="positive_ratio must be in"):
        ICTSampler(ICTConfig(positive_ratio=1.5), POOL)
    with pytest.raises(ValueError, match="min_distractors <= max_distractors"):
        ICTSampler(ICTConfig(min_distractors=4, max_distractors=2), POOL)


def test_a_distractor_is_never_the_utterances_own_keyword():
    sampler = ICTSampler(ICTConfig(probability=1.0, positive_ratio=0.0, max_distractors=8), POOL + ["Kowalczyk"])
    for s in range(200):
        assert "Kowalczyk" not in sampler(["kowalczyk"], random.Random(s))


# ----- evaluation lists -------------------------------------------------------------------------------------
def test_biasing_lists_hold_own_keywords_plus_n_unseen_distractors_deterministically():
    lists = biasing_lists(KEYWORDS, POOL, 3, seed=1)
    for own, words in zip(KEYWORDS, lists):
        assert set(own) <= set(words) and len(words) == len(own) + 3
        assert set(words) - set(own) <= set(POOL)
    assert lists == biasing_lists(KEYWORDS, POOL, 3, seed=1)
    assert lists != biasing_lists(KEYWORDS, POOL, 3, seed=2)
    assert biasing_lists(KEYWORDS, POOL, 0) == [list(k) for k in KEYWORDS]
    with pytest.raises(ValueError, match="pool holds only"):
        biasing_lists(KEYWORDS, POOL, 9)


def test_the_unseen_pool_drops_every_name_heard_in_training():
    pool = unseen_pool(["We met Olsen in Bremen."], ["Olsen", "Sadri", "sadri", "Tinte"], size=0)
    assert pool == ["Sadri", "Tinte"]
    big = unseen_pool(["We met Olsen in Bremen."], [], size=30, seed=3)
    assert len(big) >= 30 and "Olsen" not in big and big == unseen_pool(["We met Olsen in Bremen."], [], 30, 3)


# ----- the metrics --------------------------------------------------------------------------------------------
def test_biasing_scores_by_le_et_al():
    refs = ["call Kowalczyk now", "hello world"]
    hyps = ["call kowalski now", "hello barillaro world"]
    lists = [["Kowalczyk", "Barillaro"], ["Barillaro"]]
    s = biasing_scores(refs, hyps, lists)
    assert s["b_words"] == 1 and s["u_words"] == 4
    assert s["b_wer"] == 2.0  # the substituted name, and the inserted list word (a biased-word error)
    assert s["u_wer"] == 0.0 and s["wer"] == pytest.approx(2 / 5)
    assert s["false_alarms"] == 1 and s["recall"] == 0.0 and s["precision"] == 0.0
    fixed = biasing_scores(["call Kowalczyk now", "hello world"], ["call kowalczyk now", "hello word world"], lists)
    assert fixed["b_wer"] == 0.0 and fixed["u_wer"] == 0.25  # an inserted non-list word is a U error
    assert fixed["recall"] == fixed["precision"] == fixed["f1"] == 1.0 and fixed["false_alarms"] == 0
    assert biasing_scores(refs, hyps, [None, None])["b_words"] == 0  # no list: every word is a U word
    with pytest.raises(ValueError, match="2 references, 2 hypotheses and 1 biasing lists"):
        biasing_scores(refs, hyps, lists[:1])


def test_example_rows_find_fixes_and_false_alarms():
    rows = example_rows(["a", "b"], ["call Kowalczyk now", "hello world"], ["call kowalczyk now", "hello sadri world"],
                        [["Kowalczyk"], ["Sadri"]], baseline_hyps=["call kowalski now", "hello world"])
    assert [r["id"] for r in rows["fixed"]] == ["a"] and rows["fixed"][0]["words"] == ["kowalczyk"]
    assert [r["id"] for r in rows["false_alarm"]] == ["b"] and rows["false_alarm"][0]["words"] == ["sadri"]


# ----- the length guard -----------------------------------------------------------------------------------
def test_a_list_too_long_is_cut_with_a_warning_or_refused():
    tok = tiny_tokenizer()
    words = [f"Name{i}x" for i in range(100)]
    with pytest.warns(UserWarning, match="keyword list cut from 100 to"):
        kept = fit_context(words, tok, 60)
    assert 0 < len(kept) < 100 and kept == words[:len(kept)] and context_tokens(tok, kept) <= 60
    assert context_tokens(tok, words[:len(kept) + 1]) > 60  # the longest that fits
    with pytest.raises(ContextTooLong, match="100 words takes .* tokens, but only 60 fit"):
        fit_context(words, tok, 60, on_overflow="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a list that fits: no warning
        assert fit_context(words[:3], tok, 60) == words[:3]


def test_context_cost_grows_with_the_list():
    tok = tiny_tokenizer()
    costs = [context_tokens(tok, lst[0]) for lst in (biasing_lists([["Kowalczyk"]], POOL, n) for n in (0, 2, 4, 8))]
    assert costs == sorted(costs) and costs[0] < costs[-1]


# ----- with a model -------------------------------------------------------------------------------------------
def _utts(tmp_path, split, n):
    out = []
    for i in range(n):
        sec = 1.0 + 0.2 * (i % 4)
        path = tmp_path / f"{split}{i}.wav"
        write_noise(path, sec, seed=i)
        out.append(Utterance(id=f"{split}{i}", audio=str(path), text=TEXTS[i % 4], duration=sec,
                             keywords=KEYWORDS[i % 4]))
    return out


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    """A saved tiny 'stage-3' SpeechLM with LoRA adapters (instruction before the audio)."""
    d = tmp_path_factory.mktemp("s3")
    model = tiny_ctc_speechlm(save_tiny_parts(d), TEXTS, r=4)
    model.save_pretrained(d / "stage3")
    return d / "stage3"


def _cfg(stage3, **kw) -> Stage4Config:
    cfg = Stage4Config(init_from=str(stage3), llm_dtype=None, train=TrainConfig(max_steps=2, warmup_steps=0,
                       log_every=1, eval_every=0, progress=False, lr=1e-2),
                       decode=DecodeConfig(max_new_tokens=4, batch_size=3, draft=False),
                       evaluation=BiasEvalConfig(distractors=(0, 3), whisper=False), **kw)
    cfg.data.batch_size, cfg.data.use_cache = 4, False
    return cfg


def test_saved_adapters_load_frozen_or_trainable(stage3):
    assert not any(p.requires_grad for p in lora_parameters(SpeechLM.from_pretrained(stage3)).values())
    model = load_stage3(_cfg(stage3))
    assert lora_parameters(model) and all(p.requires_grad for p in lora_parameters(model).values())
    assert not any(p.requires_grad for p in model.projector.parameters())


def test_per_item_instructions_decode_as_each_alone(stage3, tmp_path):
    model = load_stage3(_cfg(stage3), trainable=False)
    utts = _utts(tmp_path, "t", 3)
    instructions = [with_context("Transcribe the audio.", w) for w in (["Kowalczyk"], None, POOL)]
    cfg = DecodeConfig(max_new_tokens=5, batch_size=3, draft=False)
    together = transcribe(model, utts, cfg, instruction=instructions, progress=False).token_ids
    alone = [transcribe(model, [u], cfg, instruction=i, progress=False).token_ids[0]
             for u, i in zip(utts, instructions)]
    assert together == alone
    with pytest.raises(ValueError, match="2 instructions for 3 items"):
        transcribe(model, utts, cfg, instruction=instructions[:2], progress=False)


def test_ict_training_and_biasing_evaluation_end_to_end(stage3, tmp_path):
    cfg = _cfg(stage3, ict=ICTConfig(probability=0.75, max_distractors=3))
    model = load_stage3(cfg)
    train, test = _utts(tmp_path, "train", 8), _utts(tmp_path, "test", 4)
    ds = make_ict_dataset(cfg, model, train, progress=False)
    with_list = [w for w in ds.contexts.values() if w is not None]
    assert 0 < len(with_list) <= len(ds) and any("Names that may occur:" in i for i in ds.instructions.values())
    before = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
    result = train_ict(cfg, model, ds)
    assert result["final"]["step"] == 2
    assert any(not torch.equal(before[n], p) for n, p in lora_parameters(model).items())
    lists = {"none": None, 0: biasing_lists([u.keywords for u in test], POOL, 0),
             3: biasing_lists([u.keywords for u in test], POOL, 3),
             "odd": [["東京🙂", "Kowalczyk", "kowalczyk", ""]] * 4,
             "huge": [[f"Name{i}x" for i in range(400)]] * 4}  # far over the tiny LLM's 512 positions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = evaluate_biasing(cfg, model, test, lists)
    assert any("4 of 4 keyword lists were cut" in str(w.message) for w in caught)
    assert out["huge"]["lists_cut"] == 4 and out[3]["lists_cut"] == 0 and len(out["odd"]["hyps"]) == 4
    assert out["none"]["prompt_tokens"] < out[0]["prompt_tokens"] < out[3]["prompt_tokens"]
    assert out["none"]["context_tokens"] == 0 and out["none"]["b_words"] == out[3]["b_words"] == 3
    for row in out.values():
        assert {"wer", "u_wer", "b_wer", "f1", "false_alarms", "seconds_per_utt"} <= set(row)
    cfg.evaluation.on_overflow = "raise"
    with pytest.raises(ContextTooLong):
        evaluate_biasing(cfg, model, test, {"huge": lists["huge"]})


# ----- CTC-assisted list filtering ----------------------------------------------------------------------------
def test_the_list_filter_keeps_the_names_that_sound_like_the_projectors_transcript():
    from speechlm_lib.decoding.list_filter import ListFilterConfig, filter_list, similarity

    hyp = "why did mateus foods cancel the order"
    assert similarity("Matthews", hyp.split()) > 0.6 > similarity("Kowalczyk", hyp.split())
    assert similarity("Mateus Foods", hyp.split()) == 1.0  # a two-word name against runs of 1-3 words
    names = ["Kowalczyk", "Barillaro", "Matthews", "Zvokrosloum", "Bourgeois"]
    assert filter_list(names, hyp, ListFilterConfig(keep=2)) == ["Matthews"]  # the rest score under min_score
    kept = filter_list(names, hyp, ListFilterConfig(keep=2, min_score=0.0))
    assert len(kept) == 2 and "Matthews" in kept and kept == [n for n in names if n in kept]  # the list's order
    assert filter_list(names, hyp, ListFilterConfig(keep=0)) is names  # off: the whole list
    assert filter_list(None, hyp, ListFilterConfig(keep=3)) is None and filter_list(names, "", ListFilterConfig(keep=3)) == []


def test_the_sound_match_finds_names_spelt_otherwise():
    """eSpeak's pronunciations: "Phoebe" heard as "feebee" is a perfect match by sound, a poor one by letters."""
    from speechlm_lib.data.tts import phonemes
    from speechlm_lib.decoding.list_filter import MATCH, ListFilterConfig, filter_list, similarity

    assert phonemes("Phoebe") == phonemes("feebee") != "" and phonemes("  ") == ""
    assert similarity("Phoebe", [MATCH["sound"]("feebee")], "sound") == 1.0 > 0.6 > similarity("Phoebe", ["feebee"])
    names = ["Kowalczyk", "Phoebe", "Barillaro", "Sean"]
    hyp = "then feebee called shawn"
    assert filter_list(names, hyp, ListFilterConfig(keep=2, min_score=0.6, match="sound")) == ["Phoebe", "Sean"]
    assert filter_list(names, hyp, ListFilterConfig(keep=2, min_score=0.6, match="spelling")) == ["Sean"]
    with pytest.raises(ValueError, match="unknown list-filter match 'smell'; known: spelling, sound"):
        filter_list(names, hyp, ListFilterConfig(keep=2, match="smell"))


def test_biasing_evaluation_with_the_filter_counts_its_time_and_what_it_kept(stage3, tmp_path):
    from dataclasses import replace

    from speechlm_lib.decoding.list_filter import ListFilterConfig, projector_texts

    cfg = _cfg(stage3)
    model = load_stage3(cfg, trainable=False)
    test = _utts(tmp_path, "f", 4)
    hyps = projector_texts(model, test)
    assert len(hyps) == 4 and all(isinstance(h, str) for h in hyps)
    lists = {"none": None, 3: biasing_lists([u.keywords for u in test], POOL, 3)}
    on = replace(cfg, evaluation=replace(cfg.evaluation, filter=ListFilterConfig(keep=1, min_score=0.0)))
    out = evaluate_biasing(on, model, test, lists)
    assert out[3]["filter_seconds"] > 0 and out["none"]["filter_seconds"] == 0
    assert 0 <= out[3]["keywords_kept"] <= 1 and out["none"]["keywords_kept"] is None
    off = evaluate_biasing(cfg, model, test, lists)
    assert out[3]["context_tokens"] < off[3]["context_tokens"]  # one name a list instead of four
    assert out[3]["b_words"] == off[3]["b_words"]  # scored against the whole list either way
    spot = replace(cfg, evaluation=replace(cfg.evaluation, filter=ListFilterConfig(keep=1, min_score=0.0,
                                                                                    match="ctc")))
    spotted = evaluate_biasing(spot, model, test, lists)  # entries spotted in the projector's posteriors
    assert spotted[3]["filter_seconds"] > 0 and [len(g) for g in spotted[3]["given"]] == [1] * 4
    assert spotted[3]["b_words"] == off[3]["b_words"]


def test_biasing_evaluation_snaps_the_same_decoding_and_keeps_the_scores_before(stage3, tmp_path):
    from dataclasses import replace

    from speechlm_lib.decoding.list_snap import ListSnapConfig, snap_to_list
    from speechlm_lib.recipes.stage4_context import tune_snap

    cfg = _cfg(stage3)
    model = load_stage3(cfg, trainable=False)
    test = _utts(tmp_path, "s", 4)
    lists = {"none": None, 3: biasing_lists([u.keywords for u in test], POOL, 3)}
    snap = ListSnapConfig(min_score=0.01, names_only=False)  # anything sharing a letter with an entry is swapped
    off = evaluate_biasing(cfg, model, test, lists)
    on = evaluate_biasing(replace(cfg, evaluation=replace(cfg.evaluation, snap=snap)), model, test, lists)
    assert "before_snap" not in off[3] and on[3]["raw_hyps"] == off[3]["hyps"]  # one decoding, snapped after
    assert on[3]["before_snap"]["wer"] == off[3]["wer"] and on[3]["swaps"] > 0
    assert on[3]["hyps"] == [snap_to_list(h, w, snap)[0] for h, w in zip(off[3]["hyps"], on[3]["given"])]
    assert on["none"]["swaps"] == 0 and on["none"]["hyps"] == off["none"]["hyps"]  # no list, nothing to snap to
    best, rows = tune_snap(cfg, model, test, {0: lists[3]}, grid=(0.0, 0.01, 0.9))
    assert best in (0.0, 0.01, 0.9) and [r["min_score"] for r in rows] == [0.0, 0.01, 0.9]
    assert rows[1]["swaps"] >= rows[2]["swaps"] and rows[0]["swaps"] == 0


def test_biasing_evaluation_places_spotted_entries_after_snapping_from_the_same_decoding(stage3, tmp_path):
    from dataclasses import replace

    from speechlm_lib.decoding.list_filter import projector_spotted
    from speechlm_lib.decoding.list_place import ListPlaceConfig, place_spotted
    from speechlm_lib.recipes.stage4_context import tune_place

    cfg = _cfg(stage3)
    model = load_stage3(cfg, trainable=False)
    test = _utts(tmp_path, "p", 4)
    lower = [[w.lower() for w in words] for words in biasing_lists([u.keywords for u in test], POOL, 3)]
    lists = {"none": None, 3: lower}  # the tiny projector spells lower-case words only
    place = ListPlaceConfig(min_similarity=1e-9)  # every entry that fits the frames is placed
    off = evaluate_biasing(cfg, model, test, lists)
    on = evaluate_biasing(replace(cfg, evaluation=replace(cfg.evaluation, place=place)), model, test, lists)
    assert on[3]["raw_hyps"] == off[3]["hyps"] and on[3]["before_snap"]["wer"] == off[3]["wer"]
    spotted = projector_spotted(model, test)
    assert on[3]["hyps"] == [place_spotted(h, w, s, place)[0] for h, w, s in zip(off[3]["hyps"], on[3]["given"],
                                                                                  spotted)]
    assert on[3]["placed"] > 0 and on[3]["snap_seconds"] > 0  # the projector pass counts as decoding time
    assert on[3]["snap_only"]["wer"] == off[3]["wer"]  # snapping is off here: only the placing changed them
    assert on["none"]["placed"] == 0 and on["none"]["hyps"] == off["none"]["hyps"]
    best, rows = tune_place(cfg, model, test, {0: lists[3]}, grid=(0.0, 1e-9, 1.1))
    assert best in (0.0, 1e-9, 1.1) and [r["placed"] for r in rows][0] == 0 == rows[2]["placed"] < rows[1]["placed"]
