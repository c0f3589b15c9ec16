"""Stage 3 with tiny random models: LoRA adapters, their save/load and merge, tasks, exposure, text checks."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.speechlm_dataset import Collate, TaskDataset
from speechlm_lib.data.tasks import TASKS, get_task, task_items
from speechlm_lib.decoding.generation import DecodeConfig, transcribe
from speechlm_lib.experiments.text_ability import answered, text_ability
from speechlm_lib.models.build import ModelConfig, build_speechlm
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.lora import (LoraSettings, LowRankLinear, adapters_merged, adapters_off, add_lora,
                                      lora_parameters, merge_lora)
from speechlm_lib.models.speechlm import load_llm
from speechlm_lib.models.tiny_models import save_tiny_llm, save_tiny_wav2vec2
from speechlm_lib.recipes.stage3_lora import Stage3Config, add_adapters, score_task

TEXTS = ["hello world", "the quick brown fox jumps", "you are tiny", "tiny words here"]
GERMAN = "hallo welt"


def _utts(tmp_path, n=4, german=1):
    out = []
    for i in range(n + german):
        sec = 1.0 + 0.3 * i
        wave = np.random.RandomState(i).randn(int(16000 * sec)).astype("float32") * 0.1
        path = tmp_path / f"u{i}.wav"
        sf.write(str(path), wave, 16000)
        if i < n:
            out.append(Utterance(id=f"u{i}", audio=str(path), text=TEXTS[i % 4], duration=sec,
                                 keywords=["tiny"] if "tiny" in TEXTS[i % 4] else [],
                                 translation="hallo" if i % 2 == 0 else None))
        else:
            out.append(Utterance(id=f"g{i}", audio=str(path), text=GERMAN, duration=sec, language="de"))
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A saved tiny LLM and wav2vec2 encoder (so a fresh process can load them by path)."""
    d = tmp_path_factory.mktemp("parts")
    return str(save_tiny_llm(d / "llm")), str(save_tiny_wav2vec2(d / "w2v"))


def _model(parts, r=4, seed=0):
    llm_dir, enc_dir = parts
    llm, tok = load_llm(llm_dir)
    enc = ENCODERS.build("wav2vec2", source=enc_dir)
    cfg = ModelConfig(encoder="wav2vec2", encoder_source=enc_dir, llm=llm_dir, projector="ctc", stride=2,
                      projector_kwargs={"hidden": 32, "hard": True, "dropout": 0.0})
    torch.manual_seed(seed)
    model = build_speechlm(cfg, encoder=enc, llm=llm, tokenizer=tok, texts=TEXTS + [GERMAN, "hallo"])
    if r:
        add_lora(model, LoraSettings(r=r, alpha=2 * r))
        with torch.no_grad():  # adapters that do something (B starts at zero)
            for name, p in lora_parameters(model).items():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return model.eval()


def test_the_from_scratch_lora_layer_is_peft_s_formula():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5))
    mine = LowRankLinear(torch.nn.Linear(6, 5), r=2, alpha=4.0)
    mine.base.load_state_dict(net[0].state_dict())
    torch.nn.init.normal_(mine.B)
    x = torch.randn(3, 6)
    torch.testing.assert_close(mine.base(x), net(x))  # B = 0 would give the frozen layer; here B != 0
    wrapped = get_peft_model(net, LoraConfig(r=2, lora_alpha=4.0, target_modules=["0"]))
    layer = wrapped.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(mine.A)
        layer.lora_B["default"].weight.copy_(mine.B)
    torch.testing.assert_close(wrapped(x), mine(x))
    assert [n for n, p in mine.named_parameters() if p.requires_grad] == ["A", "B"]


def test_adapters_train_and_nothing_else_of_the_llm(parts, tmp_path):
    model = _model(parts, r=0)
    frozen = {n: p.detach().clone() for n, p in model.llm.named_parameters()}
    cfg = Stage3Config.preset("smoke").override(["lora.r=4", "train_projector=False"])
    counts = add_adapters(cfg, model)
    assert counts["llm"]["trainable"] == sum(p.numel() for p in lora_parameters(model).values()) > 0
    assert counts["projector"]["trainable"] == 0 and counts["encoder"]["trainable"] == 0
    ds = TaskDataset(task_items({"asr_en": 1.0}, _utts(tmp_path)), model.encoder, model.prompts)
    batch = Collate(model.encoder, model.prompts.pad_id)([ds[i] for i in range(len(ds))])
    model.train()
    loss = model(**batch)["loss"]
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n for n in grads)
    for n, p in model.llm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, frozen[n.replace("base_model.model.", "").replace(".base_layer", "")])


def test_a_projector_that_trains_along_gets_gradients_through_its_hard_tokens(parts, tmp_path):
    model = _model(parts, r=0)
    counts = add_adapters(Stage3Config.preset("smoke").override(["lora.r=4", "train_projector=True"]), model)
    assert counts["projector"]["trainable"] > 0
    ds = TaskDataset(task_items({"asr_en": 1.0}, _utts(tmp_path)), model.encoder, model.prompts)
    model.train()
    model(**Collate(model.encoder, model.prompts.pad_id)([ds[i] for i in range(len(ds))]))["loss"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("projector.classify") for n in grads)  # straight-through the one-hot pick
    assert any("lora_" in n for n in grads)


def test_adapters_come_back_in_a_fresh_process_with_the_same_transcripts(parts, tmp_path):
    model = _model(parts)
    utts = _utts(tmp_path, german=0)
    cfg = DecodeConfig(batch_size=4, max_new_tokens=6)
    want = transcribe(model, utts, cfg, progress=False).texts
    with adapters_off(model):
        plain = transcribe(model, utts, cfg, progress=False).texts
    assert want != plain  # the adapters change what is written
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "speechlm.json").read_text())
    assert saved["lora"] == "adapter" and (tmp_path / "saved/adapter/adapter_config.json").is_file()
    assert (tmp_path / "saved/adapter/adapter_model.safetensors").stat().st_size < 1_000_000  # adapters only
    script = ("import json, sys\nfrom speechlm_lib.models.speechlm import SpeechLM\n"
              "from speechlm_lib.decoding.generation import DecodeConfig, transcribe\n"
              "m = SpeechLM.from_pretrained(sys.argv[1])\n"
              "print(json.dumps(transcribe(m, json.loads(sys.argv[2]), DecodeConfig(batch_size=4, max_new_tokens=6),"
              " progress=False).texts))")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "saved"), json.dumps([u.audio for u in utts])],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == want


def test_a_merged_model_writes_the_same_transcripts_and_refuses_to_save(parts, tmp_path):
    model = _model(parts)
    utts = _utts(tmp_path)
    for draft in (True, False):
        cfg = DecodeConfig(batch_size=4, max_new_tokens=6, draft=draft, merge_adapters=False)
        before = transcribe(model, utts, cfg, progress=False).texts
        merged = merge_lora(_model(parts))
        assert merged.peft is None and not lora_parameters(merged)
        assert transcribe(merged, utts, cfg, progress=False).texts == before
    with pytest.raises(ValueError, match="before `merge_lora`"):
        merged.save_pretrained(tmp_path / "merged")


def test_decoding_folds_the_adapters_in_and_puts_every_weight_back(parts, tmp_path):
    from peft.tuners.lora import LoraLayer

    model, utts = _model(parts), _utts(tmp_path)
    weights = {n: p.detach().clone() for n, p in model.state_dict().items()}
    layers = [m for m in model.llm.modules() if isinstance(m, LoraLayer)]
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    with adapters_off(model):
        plain = model.llm(input_ids=ids).logits
    beside = model.llm(input_ids=ids).logits
    with adapters_merged(model):
        assert layers and all(m.merged for m in layers)  # the passes run the folded weights alone
        folded = model.llm(input_ids=ids).logits
    assert torch.allclose(folded, beside, atol=1e-4) and not torch.allclose(folded, plain, atol=1e-2)
    for draft in (True, False):
        cfg = DecodeConfig(batch_size=4, max_new_tokens=6, draft=draft)
        texts = {m: transcribe(model, utts, replace(cfg, merge_adapters=m), progress=False).texts for m in (1, 0)}
        assert texts[1] == texts[0]
    with pytest.raises(RuntimeError), adapters_merged(model):
        raise RuntimeError("a decoding that fails half way")
    assert not any(m.merged for m in layers) and lora_parameters(model)
    for n, p in model.state_dict().items():  # bit for bit, not W + BA - BA
        assert torch.equal(p, weights[n]), n


def test_tasks_by_name_with_clear_errors_and_counts(tmp_path):
    with pytest.raises(KeyError, match="unknown task 'asr_fr'.*asr_de, asr_en, ast_de"):
        TASKS.build("asr_fr")
    said = []
    assert get_task("asr_de", encoder_languages=("en",), warn=said.append).language == "de"
    assert "trained on en only" in said[0]
    report = Report()
    pairs = task_items({"asr_en": 1.0, "asr_de": 1.0, "ast_de": 1.0}, _utts(tmp_path, n=4, german=2), report)
    names = [t.name for _, t in pairs]
    assert names.count("asr_en") == 4 and names.count("asr_de") == 2 and names.count("ast_de") == 2
    assert {item for item, _ in report.skipped} == {"ast_de:u1", "ast_de:u3"}  # no translation: left out, counted
    assert len({id(u) for u, _ in pairs}) == len(pairs)  # one object a pair, even for a shared recording
    half = task_items({"asr_en": 1.0, "ast_de": 0.5}, _utts(tmp_path, n=4, german=0))
    assert [t.name for _, t in half].count("ast_de") == 1  # half the ratio of the largest task


def test_task_dataset_asks_each_pair_its_own_task(parts, tmp_path):
    model = _model(parts, r=0)
    pairs = task_items({"asr_en": 1.0, "ast_de": 1.0, "asr_de": 1.0}, _utts(tmp_path))
    ds = TaskDataset(pairs, model.encoder, model.prompts, seed=3)
    again = TaskDataset(pairs, model.encoder, model.prompts, seed=3)
    for i in range(len(ds)):
        task = TASKS.build(ds.task_names()[i])
        item = ds[i]
        assert model.prompts.decode(item["target"]) == task.answer(ds.utts[i])
        prompt = model.tokenizer.decode(item["prefix"] + item["suffix"])
        assert any(instr in prompt for instr in task.train)
        assert item["prefix"] + item["suffix"] == again[i]["prefix"] + again[i]["suffix"]  # fixed per seed


def test_exposure_draws_tokens_only_in_training(parts, tmp_path):
    model = _model(parts, r=0)
    proj = model.projector
    x, n = torch.randn(2, 40, proj.in_dim), torch.tensor([40, 31])
    proj.eval()
    best = proj(x, n)
    proj.sample_temperature = 5.0
    torch.testing.assert_close(proj(x, n)[0], best[0])  # eval: always the best path
    proj.train()
    torch.manual_seed(0)
    drawn = proj(x, n)
    assert drawn[0].shape != best[0].shape or not torch.equal(drawn[0], best[0])
    rows = proj.table.float()
    tokens = drawn[0][0, : int(drawn[1][0])].float()
    assert all(bool(((rows - t).abs().sum(-1) < 1e-4).any()) for t in tokens)  # each is one token's embedding
    proj.sample_temperature = 0.0
    torch.testing.assert_close(proj(x, n)[0], best[0])


def test_score_task_uses_each_metric(parts, tmp_path):
    model = _model(parts)
    utts = _utts(tmp_path)
    cfg = DecodeConfig(batch_size=4, max_new_tokens=4)
    for name, key in (("asr_en", "wer"), ("asr_de", "wer"), ("ast_de", "bleu"), ("caps", "all_caps"),
                      ("names", "recall")):
        out = score_task(model, TASKS.build(name), utts, cfg)
        assert key in out and out["n"] == len(out["hyps"]) == len([u for u in utts if TASKS.build(name).applies(u)])


def test_unseen_paraphrases_are_dealt_round_robin_one_pass_in_all(parts, tmp_path, monkeypatch):
    """``<task>@unseen``: each held-out paraphrase is asked, on disjoint utterances that together are the
    task's test set once (not once per paraphrase)."""
    from speechlm_lib.recipes import stage3_lora

    asked = []
    real = stage3_lora.score_task

    def spy(model, task, utts, decode=None, instruction=None, cache=None, progress=False):
        asked.append((task.name, instruction, [u.id for u in utts if task.applies(u)]))
        return real(model, task, utts, decode, instruction=instruction, cache=cache)

    monkeypatch.setattr(stage3_lora, "score_task", spy)
    utts = _utts(tmp_path, n=5)
    cfg = Stage3Config.preset("smoke").override(["eval_tasks=('asr_en',)", "decode.max_new_tokens=4"])
    out = stage3_lora.evaluate_tasks(cfg, _model(parts), utts)
    unseen = [(phrase, ids) for name, phrase, ids in asked if phrase is not None]
    task = TASKS.build("asr_en")
    english = [u.id for u in utts if task.applies(u)]
    assert [phrase for phrase, _ in unseen] == list(task.held_out) and len(task.held_out) >= 2
    assert sorted(i for _, ids in unseen for i in ids) == sorted(english)  # disjoint, all of them, once
    assert out["asr_en@unseen"]["n"] == out["asr_en"]["n"] == len(english)
    assert sorted(out["asr_en@unseen"]["ids"]) == sorted(english)


def test_text_ability_asks_with_adapters_on_and_off(parts):
    model = _model(parts)
    on = text_ability(model, questions=[("Say hi.", ("hi",))], texts=["hello world"])
    with adapters_off(model):
        off = text_ability(model, questions=[("Say hi.", ("hi",))], texts=["hello world"])
    assert on["perplexity"] != off["perplexity"] and on["perplexity"] > 1
    assert answered("Paris, of course.", ("paris",)) and answered("It is 7.", ("seven", "7"))
    assert not answered("London", ("paris",))


def test_batches_bucketed_by_tokens_group_rows_of_similar_length(parts, tmp_path):
    """`data.bucket_by: tokens` (stage 4's lists make prompts differ in length): the key counts every LLM position
    of a row, and batches drawn by it pad less than batches drawn by seconds."""
    from speechlm_lib.data.speechlm_dataset import make_loader

    model = _model(parts, r=0)
    utts = _utts(tmp_path, n=8, german=0)
    ds = TaskDataset(task_items({"asr_en": 1.0}, utts), model.encoder, model.prompts)
    for i, u in enumerate(sorted(ds.utts, key=lambda u: u.duration)):  # as ICT gives: a long list on every other
        #   item by duration, so the prompt's length no longer follows the audio's
        ds.instructions[id(u)] = "Names: " + ", ".join(["Quintavalle"] * (40 if i % 2 else 0)) + ". Transcribe."
    lengths = ds.token_lengths(model.token_rate)
    item = ds[3]
    assert lengths[3] == pytest.approx(ds.utts[3].duration * model.token_rate + len(item["prefix"])
                                       + len(item["suffix"]) + len(item["target"]))

    def padding(loader):
        rows = [[lengths[i] for i in batch] for batch in loader.batch_sampler]
        return sum(len(r) * max(r) - sum(r) for r in rows)

    by_tokens = make_loader(ds, batch_size=2, shuffle=False, lengths=lengths)
    assert padding(by_tokens) < padding(make_loader(ds, batch_size=2, shuffle=False))
    assert sorted(i for b in by_tokens.batch_sampler for i in b) == list(range(len(ds)))  # every item once
    with pytest.raises(ValueError, match="max_batch_seconds budgets durations"):
        make_loader(ds, max_batch_seconds=10.0, lengths=lengths)
    from speechlm_lib.recipes.stage3_lora import train_lora

    with pytest.raises(ValueError, match="data.bucket_by must be 'seconds' or 'tokens', got 'frames'"):
        train_lora(Stage3Config.preset("smoke").override(["data.bucket_by=frames"]), model, ds)


def test_a_system_in_a_process_of_its_own_decodes_as_it_does_here(parts, tmp_path):
    from speechlm_lib.evaluation.isolated import Isolated
    from speechlm_lib.evaluation.systems import SYSTEMS, SystemUnavailable

    _model(parts).save_pretrained(tmp_path / "saved")
    utts = _utts(tmp_path, german=0)
    here = SYSTEMS.build("speechlm", folder=tmp_path / "saved", batch_size=2)
    with Isolated("speechlm", torch_threads=1, folder=tmp_path / "saved", batch_size=2) as there:
        out = there.decode(utts)
        assert out.texts == here.decode(utts).texts and len(out.seconds) == len(utts)
        assert there.count_passes(utts) == here.count_passes(utts)  # any method, by name
        with pytest.raises(AttributeError, match="no_such_method"):  # raised there, re-raised here
            there.no_such_method()
        assert there.call("llm_dtype") == "float32"  # still answering after an error
    assert not there._proc.is_alive()
    with pytest.raises(SystemUnavailable, match="nowhere"):
        Isolated("speechlm", folder=tmp_path / "nowhere")
