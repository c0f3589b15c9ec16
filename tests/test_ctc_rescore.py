"""N-best rescoring of the CTC projector by the LLM (`decoding.ctc_rescore`), on hand-made posteriors and the
tiny saved parts."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import save_tiny_parts, tiny_ctc_speechlm
from speechlm_lib.decoding.ctc import collapse
from speechlm_lib.decoding.ctc_rescore import (RescoreConfig, choose_weights, ctc_prefix_beam, lm_context,
                                               nbest_scores, rescored, text_logprobs)

TEXTS = ["the cat sat", "a dog ran home"]


def brute_force(logp: torch.Tensor) -> dict[tuple, float]:
    """log P of every label sequence: every frame path enumerated, collapsed, summed."""
    out: dict[tuple, float] = {}
    frames, classes = logp.shape
    for path in itertools.product(range(classes), repeat=frames):
        labels = tuple(collapse(path))
        lp = float(sum(logp[t, c] for t, c in enumerate(path)))
        out[labels] = math.log(math.exp(out[labels]) + math.exp(lp)) if labels in out else lp
    return out


def test_prefix_beam_sums_every_path_of_each_sequence():
    torch.manual_seed(0)
    logp = torch.randn(5, 4).log_softmax(-1)
    exact = brute_force(logp)
    got = ctc_prefix_beam(logp, beam=1000, top_k=3, blank_skip=1.0)
    assert [p for p, _ in got] == sorted(exact, key=lambda k: -exact[k])[:len(got)]
    for labels, score in got:
        assert score == pytest.approx(exact[labels], abs=1e-5)


def test_prefix_beam_keeps_repeats_apart_only_across_a_blank():
    logp = torch.tensor([[0.01, 0.98, 0.01], [0.98, 0.01, 0.01], [0.01, 0.98, 0.01]]).log()  # a _ a
    assert ctc_prefix_beam(logp, beam=4)[0][0] == (1, 1)
    logp = torch.tensor([[0.01, 0.98, 0.01], [0.01, 0.98, 0.01]]).log()  # a a
    assert ctc_prefix_beam(logp, beam=4)[0][0] == (1,)


def test_choose_weights_lets_the_language_model_overrule_a_close_call():
    tables = [{"candidates": [[1], [2]], "scores": {"ctc": torch.tensor([-1.0, -1.2]),
                                                   "lm": torch.tensor([-9.0, -2.0]), "tokens": torch.ones(2)}}]
    cfg = RescoreConfig(lm_weight=0.0, length_bonus=0.0, grid={"lm_weight": [0.0, 0.5]})
    weights, tried = choose_weights(tables, ["two"], lambda ids: {1: "one", 2: "two"}[ids[0]], cfg,
                                    lambda refs, hyps: float(refs != hyps))
    assert weights == {"lm_weight": 0.5} and [v for _, v in tried] == [1.0, 0.0]
    assert rescored(tables, RescoreConfig(lm_weight=0.0, length_bonus=0.0)) == [[1]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_ctc_speechlm(save_tiny_parts(tmp_path_factory.mktemp("parts")), TEXTS, r=2).eval()


def test_text_scores_are_the_llms_own_log_probabilities_with_adapters_off(model):
    tok = model.prompts.tokenizer
    cands = [tok("the cat", add_special_tokens=False)["input_ids"], tok("a dog ran", add_special_tokens=False)["input_ids"]]
    context = lm_context(RescoreConfig(examples=["the cat sat"]))
    got = text_logprobs(model, cands, context)
    head = tok(context, add_special_tokens=False)["input_ids"]
    with model.peft.disable_adapter(), torch.no_grad():
        for i, c in enumerate(cands):
            ids = head + c + [model.prompts.newline_id]
            lp = model.llm(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
            want = sum(float(lp[t - 1, ids[t]]) for t in range(len(head), len(ids)))
            assert float(got[i]) == pytest.approx(want, abs=1e-3)


def test_with_no_llm_weight_a_confident_projector_keeps_its_best_path(model):
    torch.manual_seed(1)
    dim = model.projector.hidden[0].in_features // model.projector.stride
    states, lengths = torch.randn(2, 12, dim), torch.tensor([12, 9])
    classify = model.projector.classify
    saved = classify.weight.detach().clone()
    try:
        with torch.no_grad():
            classify.weight.mul_(200.0)  # posteriors near one-hot: the best path holds nearly all the mass
            best = model.projector.guess_tokens(states, lengths)
            tables = nbest_scores(model, states, lengths, RescoreConfig(beam=8, top_k=4, lm_weight=0.3, grid={}))
    finally:
        with torch.no_grad():
            classify.weight.copy_(saved)
    assert set(tables[0]["scores"]) == {"ctc", "tokens", "lm"}
    assert all(len(t["candidates"]) == len(t["scores"]["lm"]) == len(t["scores"]["ctc"]) for t in tables)
    chosen = rescored(tables, RescoreConfig(lm_weight=0.0, length_bonus=0.0))
    decode = model.prompts.decode  # candidates come in the tokenizer's own pieces (`merge_spellings`)
    assert [decode(ids) for ids in chosen] == [decode(ids) for ids in best]


def test_speech_scores_are_the_speech_llms_teacher_forced_log_likelihood(model):
    from speechlm_lib.decoding.ctc_rescore import speech_logprobs

    torch.manual_seed(2)
    dim = model.projector.hidden[0].in_features // model.projector.stride
    states, lengths = torch.randn(1, 10, dim), torch.tensor([10])
    tok, pb = model.prompts.tokenizer, model.prompts
    cand = tok("a dog ran", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        audio, n = model.audio_embeddings(states=states, state_lengths=lengths)
        got = speech_logprobs(model, audio[0, :int(n[0])], [cand, cand[:1]])
        p = pb.prompt()
        target = torch.tensor([cand + [pb.end_id]])
        out = model(torch.tensor([p.prefix]), torch.tensor([len(p.prefix)]), torch.tensor([p.suffix]),
                    torch.tensor([len(p.suffix)]), target, torch.tensor([target.shape[1]]), states=states,
                    state_lengths=lengths)
    assert float(got[0]) == pytest.approx(-float(out["loss"]) * out["n_tokens"], rel=1e-3, abs=1e-3)
    assert float(got[1]) != pytest.approx(float(got[0]))  # each row scores its own candidate
