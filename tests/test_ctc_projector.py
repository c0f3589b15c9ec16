"""The ``ctc`` projector: soft tokens are the LLM's own embeddings, blanks are dropped,
CTC pre-alignment learns, and a SpeechLM with it saves and reloads."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from speechlm_lib.models.build import ModelConfig, build_speechlm
from speechlm_lib.models.ctc_projector import CTCAlignment, CTCProjector, StateMasking, _compress, ctc_vocabulary
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.projectors import PROJECTORS
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.models.tiny_models import tiny_llm, tiny_whisper
from speechlm_lib.training.trainer import TrainConfig, Trainer

TEXTS = ["hello world", "the quick brown fox", "you are tiny"]


@pytest.fixture(scope="module")
def model():
    llm, tok = tiny_llm()
    enc = ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper())
    cfg = ModelConfig(projector="ctc", stride=2, projector_kwargs={"hidden": 32, "dropout": 0.0})
    return build_speechlm(cfg, encoder=enc, llm=llm, tokenizer=tok, texts=TEXTS)


def test_vocabulary_is_the_answer_tokens_without_the_end_token(model):
    prompts = model.prompts
    vocab = ctc_vocabulary(prompts, TEXTS)
    want = {t for text in TEXTS for t in prompts.target(text)}
    assert set(vocab) == want - {prompts.end_id}
    assert model.projector.vocab.tolist() == vocab


def test_the_projector_needs_a_vocabulary():
    with pytest.raises(ValueError, match="vocab_ids"):
        PROJECTORS.build("ctc", in_dim=4, out_dim=8, stride=2)
    llm, tok = tiny_llm()
    enc = ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper())
    with pytest.raises(ValueError, match="training texts"):
        build_speechlm(ModelConfig(projector="ctc"), encoder=enc, llm=llm, tokenizer=tok)


def test_compress_drops_blanks_and_averages_runs():
    soft = torch.arange(9, dtype=torch.float).unsqueeze(1).repeat(1, 2)
    best = torch.tensor([0, 3, 3, 0, 5, 5, 5, 0, 3])
    out = _compress(soft, best, torch.zeros(9))
    assert out[:, 0].tolist() == [1.5, 5.0, 8.0]  # frames (1, 2), (4, 5, 6), (8,)
    blank_p = torch.tensor([0.9, 0.2, 0.8])
    assert _compress(soft[:3], torch.zeros(3, dtype=torch.long), blank_p)[:, 0].tolist() == [1.0]


def test_a_confident_label_gives_exactly_that_tokens_llm_embedding(model):
    proj = model.projector
    k = 2  # class k is LLM token vocab[k - 1]
    with torch.no_grad():
        last = proj.classify
        saved = (last.weight.clone(), last.bias.clone())
        last.weight.zero_()
        last.bias.fill_(-50.0)
        last.bias[k] = 50.0
        try:
            x, n = torch.randn(2, 10, proj.in_dim), torch.tensor([10, 6])
            y, m = proj(x, n)
        finally:
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])
    table = model.llm.get_input_embeddings().weight
    assert m.tolist() == [1, 1]  # every frame says token k: one run, one soft token
    torch.testing.assert_close(y[0, 0], table[proj.vocab[k - 1]], atol=1e-5, rtol=1e-5)


def test_a_row_projects_the_same_alone_or_in_a_batch(model):
    proj = model.projector.eval()
    x, n = torch.randn(3, 12, proj.in_dim), torch.tensor([12, 7, 3])
    y, m = proj(x, n)
    for i in range(3):
        alone, k = proj(x[i: i + 1, : n[i]], n[i: i + 1])
        assert int(k[0]) == int(m[i])
        torch.testing.assert_close(alone[0, : k[0]], y[i, : m[i]], atol=1e-5, rtol=1e-5)


def test_one_run_gives_the_embeddings_and_the_best_paths(model):
    proj = model.projector.eval()
    x, n = torch.randn(3, 12, proj.in_dim), torch.tensor([12, 7, 3])
    emb, m, guesses = proj.project_and_guess(x, n)
    y, k = proj(x, n)
    torch.testing.assert_close(emb, y)
    assert torch.equal(m, k)
    assert guesses == proj.guess_tokens(x, n)
    assert all(set(g) <= set(proj.vocab.tolist()) for g in guesses)


def test_labels_map_llm_ids_to_classes_and_leave_out_the_rest(model):
    objective = CTCAlignment(model)
    vocab = model.projector.vocab.tolist()
    outside = next(i for i in range(len(model.prompts.tokenizer)) if i not in vocab)
    ids = torch.tensor([[vocab[3], outside, vocab[0], model.prompts.end_id], [vocab[1], 0, 0, 0]])
    labels, lengths = objective.labels(ids, torch.tensor([4, 1]))
    assert labels.tolist() == [4, 1, 2] and lengths.tolist() == [2, 1]


def label_batch(model) -> tuple[dict, list[list[int]]]:
    """Random encoder states for TEXTS and their answer tokens: a CTC pre-alignment batch."""
    states = torch.randn(3, 40, model.encoder.dim)
    targets = [model.prompts.target(t) for t in TEXTS]
    ids = torch.zeros(3, max(map(len, targets)), dtype=torch.long)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t)
    batch = {"states": states, "state_lengths": torch.tensor([40, 30, 24]), "target_ids": ids,
             "target_lengths": torch.tensor([len(t) for t in targets])}
    return batch, targets


def test_pre_alignment_learns_the_labels_without_running_the_llm(model):
    torch.manual_seed(0)
    objective = CTCAlignment(model)
    batch, targets = label_batch(model)
    states = batch["states"]
    llm_calls = []
    hook = model.llm.register_forward_hook(lambda *a: llm_calls.append(1))
    opt = torch.optim.Adam(model.projector.parameters(), lr=3e-3)
    first = float(objective(**batch)["loss"].detach())
    for _ in range(150):
        loss = objective(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    hook.remove()
    assert not llm_calls
    assert float(loss.detach()) < 0.2 * first
    want = [t[:-1] for t in targets]  # the end-of-turn token is not a CTC label
    assert objective.greedy(states, batch["state_lengths"]) == want


def test_state_masking_zeroes_spans_inside_each_utterance_and_only_in_training(model):
    states, lengths = torch.randn(3, 40, 16) + 5.0, torch.tensor([40, 30, 24])
    assert StateMasking().apply(states, lengths) is states  # off by default
    torch.manual_seed(0)
    masked = StateMasking(time_masks=2, time_width=0.25, channel_masks=1, channel_width=4).apply(states, lengths)
    zero = masked == 0
    assert masked.shape == states.shape and zero.any() and not zero.all()
    assert torch.equal(masked[~zero], states[~zero])  # the rest untouched
    for row, n in enumerate(lengths.tolist()):  # a time span lies inside the utterance
        whole_frames = zero[row].all(-1).nonzero().flatten()
        assert whole_frames.numel() and int(whole_frames.max()) < n
    objective = CTCAlignment(model, StateMasking(time_masks=4, time_width=0.3, channel_masks=4, channel_width=64))
    batch, _ = label_batch(model)
    objective.eval()
    assert torch.equal(objective(**batch)["loss"], objective(**batch)["loss"])  # eval: no masking, no dropout
    objective.train()
    torch.manual_seed(1)
    first = objective(**batch)["loss"]
    torch.manual_seed(2)
    assert not torch.equal(first, objective(**batch)["loss"])
    proj, states = model.projector, batch["states"]  # as exposure: the projector masks in train mode only
    proj.eval()
    before = proj.guess_tokens(states, batch["state_lengths"])
    proj.state_masking = StateMasking(time_masks=4, time_width=0.3)
    assert proj.guess_tokens(states, batch["state_lengths"]) == before
    proj.train()
    for m in proj.modules():  # dropout off: the masking is the only difference left
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    torch.manual_seed(3)
    masked_logits = proj.logits(states, batch["state_lengths"])[0]
    proj.state_masking = None
    assert not torch.allclose(masked_logits, proj.logits(states, batch["state_lengths"])[0])
    proj.eval()


def test_pre_alignment_trains_under_bf16_autocast(model):
    """The cpu preset's CTC stage runs under bf16 autocast where the CPU has it (mixed_precision='fast')."""
    torch.manual_seed(0)
    saved = copy.deepcopy(model.projector.state_dict())
    objective = CTCAlignment(model)
    batch, _ = label_batch(model)
    before = float(objective(**batch)["loss"].detach())
    cfg = TrainConfig(max_steps=40, lr=3e-3, warmup_steps=1, mixed_precision="bf16", log_every=10, log_with=None,
                      progress=False)
    result = Trainer(cfg, objective, DataLoader([batch] * 40, batch_size=None)).run()
    after = float(objective(**batch)["loss"].detach())
    model.projector.load_state_dict(saved)
    assert result["final"]["step"] == 40 and all(math.isfinite(h["loss"]) for h in result["history"])
    assert after < 0.5 * before


def test_save_and_load_keep_the_vocabulary_and_weights(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    again = SpeechLM.from_pretrained(tmp_path / "m", encoder=model.encoder, llm=model.llm,
                                     tokenizer=model.prompts.tokenizer)
    assert isinstance(again.projector, CTCProjector)
    assert again.projector.vocab.tolist() == model.projector.vocab.tolist()
    for (k, a), b in zip(model.projector.state_dict().items(), again.projector.state_dict().values()):
        assert torch.equal(a, b), k
    saved = load_file(str(tmp_path / "m" / "trainable.safetensors"))
    assert not any(k.endswith((".table", ".vocab")) for k in saved)  # the LLM's embeddings by reference
    table = model.llm.get_input_embeddings().weight[again.projector.vocab]
    torch.testing.assert_close(again.projector.table, table)


def test_a_new_corpus_extends_the_vocabulary_and_old_classes_keep_their_weights(model, tmp_path):
    m = copy.deepcopy(model)
    proj = m.projector
    old_ids, old_w = proj.vocab.tolist(), proj.classify.weight.clone()
    x, n = torch.randn(2, 8, proj.in_dim), torch.tensor([8, 6])
    m.eval()
    before = proj.logits(x, n)[0]
    new_texts = ["zebra quiz", "hello world"]
    assert proj.extend_vocabulary(ctc_vocabulary(m.prompts, new_texts), m.llm) > 0
    added = sorted(set(ctc_vocabulary(m.prompts, new_texts)) - set(old_ids))
    assert proj.vocab.tolist() == old_ids + added  # appended: every old class keeps its index
    assert torch.equal(proj.classify.weight[: len(old_w)], old_w)
    torch.testing.assert_close(proj.logits(x, n)[0][..., : len(old_ids) + 1], before)
    torch.testing.assert_close(proj.table, m.llm.get_input_embeddings().weight[proj.vocab])
    assert proj.extend_vocabulary(ctc_vocabulary(m.prompts, new_texts), m.llm) == 0  # nothing new the 2nd time
    m.save_pretrained(tmp_path / "grown")
    again = SpeechLM.from_pretrained(tmp_path / "grown", encoder=m.encoder, llm=m.llm, tokenizer=m.prompts.tokenizer)
    assert again.projector.vocab.tolist() == proj.vocab.tolist()
    assert torch.equal(again.projector.classify.weight, proj.classify.weight)
    _, n_labels = CTCAlignment(m).labels(*_targets(m, ["zebra quiz"]))
    assert n_labels.item() == len(m.prompts.target("zebra quiz")) - 1  # every piece a label (the end id is not)


def _targets(m, texts):
    rows = [torch.tensor(m.prompts.target(t)) for t in texts]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), torch.tensor([len(r) for r in rows])


def test_the_llm_loss_reaches_every_projector_weight(model):
    proj = model.projector
    prompt, target = model.prompts.prompt(), model.prompts.target(TEXTS[0])
    batch = {"states": torch.randn(2, 30, proj.in_dim), "state_lengths": torch.tensor([30, 22]),
             "prefix_ids": torch.tensor([prompt.prefix] * 2), "prefix_lengths": torch.tensor([len(prompt.prefix)] * 2),
             "suffix_ids": torch.tensor([prompt.suffix] * 2), "suffix_lengths": torch.tensor([len(prompt.suffix)] * 2),
             "target_ids": torch.tensor([target] * 2), "target_lengths": torch.tensor([len(target)] * 2)}
    model.zero_grad()
    model(**batch)["loss"].backward()
    for name, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_build_picks_prompt_demonstrations_from_the_training_texts():
    llm, tok = tiny_llm()
    enc = ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper())
    cfg = ModelConfig(projector="linear", projector_kwargs={"hidden": 8}, prompt_examples=2)
    m = build_speechlm(cfg, encoder=enc, llm=llm, tokenizer=tok, texts=TEXTS)
    assert m.prompts.config.examples == ["hello world", "the quick brown fox"]
    assert cfg.prompt.examples == []  # the preset's own prompt is left as it was
    assert "the quick brown fox" in tok.decode(m.prompts.prompt().prefix)
    with pytest.raises(ValueError, match="prompt_examples=2 needs the training texts"):
        build_speechlm(cfg, encoder=enc, llm=llm, tokenizer=tok)


def test_hard_tokens_are_exact_embeddings_and_still_pass_gradients():
    torch.manual_seed(0)
    table = torch.randn(5, 8)
    proj = PROJECTORS.build("ctc", in_dim=4, out_dim=8, stride=1, hidden=16, vocab_ids=[3, 4, 5, 6, 7],
                            dropout=0.0, compress=False, hard=True)
    proj.table.copy_(table)
    x = torch.randn(1, 6, 4)
    y, _ = proj(x, torch.tensor([6]))
    _, logits, _ = proj._run(x, torch.tensor([6]))
    best = logits[0, :, 1:].argmax(-1)  # best non-blank class of each frame
    torch.testing.assert_close(y[0], table[best])  # a real token embedding, not a mixture
    y.pow(2).sum().backward()
    assert proj.classify.weight.grad.abs().sum() > 0  # straight-through: the logits still learn
    proj.hard = False
    soft, _ = proj(x, torch.tensor([6]))
    assert not torch.allclose(soft, y)


@pytest.mark.parametrize("context", [0, 1])
def test_context_layers_see_neighbours_and_ignore_padding(context):
    torch.manual_seed(0)
    proj = CTCProjector(8, 16, stride=2, hidden=32, vocab_ids=list(range(5, 25)), dropout=0.0,
                        context=context).eval()
    x, n = torch.randn(3, 12, 8), torch.tensor([12, 7, 3])
    logits, m = proj.logits(x, n)
    for i in range(3):  # padding never leaks into a row
        alone, k = proj.logits(x[i: i + 1, : n[i]], n[i: i + 1])
        torch.testing.assert_close(alone[0, : k[0]], logits[i, : m[i]], atol=1e-5, rtol=1e-5)
    later = x.clone()
    later[0, 8:] += 1.0  # change only tokens 4 and 5 of row 0
    moved = (proj.logits(later, n)[0][0, :4] - logits[0, :4]).abs().max()
    assert (moved > 1e-4) == bool(context)  # with context, earlier tokens hear the change
    if context:
        assert "context" in proj.settings and proj.num_parameters() > CTCProjector(
            8, 16, stride=2, hidden=32, vocab_ids=list(range(5, 25))).num_parameters()
