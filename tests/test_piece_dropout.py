"""BPE-dropout on the ctc projector's targets (models.piece_dropout) and the n-best's merged spellings."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_whisper_ctc

from speechlm_lib.decoding.ctc_rescore import merge_spellings
from speechlm_lib.models.ctc_projector import CTCAlignment
from speechlm_lib.models.piece_dropout import PieceDropout, bpe_merges, piece_closure

TEXTS = ["hello world", "the quick brown fox", "you are tiny"]


@pytest.fixture(scope="module")
def model():
    return tiny_whisper_ctc(TEXTS)


def test_each_merge_joins_two_tokens_into_the_same_text(model):
    tok = model.prompts.tokenizer
    merges = bpe_merges(tok)
    assert len(merges) > 50
    for merged, (left, right) in list(merges.items())[:200]:
        assert tok.convert_ids_to_tokens(left) + tok.convert_ids_to_tokens(right) == tok.convert_ids_to_tokens(merged)


def test_dropout_changes_the_pieces_never_the_text(model):
    prompts = model.prompts
    merges = bpe_merges(prompts.tokenizer)
    ids = prompts.target("the quick brown fox jumps")[:-1]
    assert PieceDropout(merges, 0.0)(ids) == ids
    spelled = PieceDropout(merges, 1.0)(ids)
    assert len(spelled) > len(ids) and not any(t in merges for t in spelled)  # single bytes only
    some = [PieceDropout(merges, 0.3, seed=s)(ids) for s in range(5)]
    assert any(ids != s and len(s) < len(spelled) for s in some)  # some pieces split, not all
    for pieces in [spelled, *some]:
        assert prompts.decode(pieces) == prompts.decode(ids)
        assert set(pieces) <= piece_closure(ids, merges)
    assert PieceDropout(merges, 0.3, seed=1)(ids) == PieceDropout(merges, 0.3, seed=1)(ids)


def test_bad_settings_are_refused(model):
    with pytest.raises(ValueError, match="rate"):
        PieceDropout({}, 1.5)
    with pytest.raises(ValueError, match="BPE"):
        bpe_merges(object())


def test_alignment_splits_targets_in_training_only_and_every_piece_is_a_class(model):
    prompts = model.prompts
    merges = bpe_merges(prompts.tokenizer)
    proj = model.projector
    added = proj.extend_vocabulary(piece_closure(proj.vocab.tolist(), merges), model.llm)
    assert added > 0
    rows = [torch.tensor(prompts.target(t)) for t in TEXTS]
    ids, lengths = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), torch.tensor([len(r) for r in rows])
    objective = CTCAlignment(model, piece_dropout=PieceDropout(merges, 1.0))
    whole = lengths - 1  # every piece a label, the end id left out
    objective.eval()
    assert objective.labels(ids, lengths)[1].tolist() == whole.tolist()
    objective.train()
    labels, n = objective.labels(ids, lengths)
    spelled = [len(PieceDropout(merges, 1.0)(r[:-1].tolist())) for r in rows]
    assert n.tolist() == spelled and all(a > b for a, b in zip(spelled, whole.tolist()))
    assert bool((labels > 0).all())  # no piece fell outside the grown vocabulary


def test_two_spellings_of_one_text_become_one_candidate(model):
    prompts = model.prompts
    merges = bpe_merges(prompts.tokenizer)
    ids = prompts.target("the quick brown fox")[:-1]
    spelled = PieceDropout(merges, 1.0)(ids)
    other = prompts.target("you are tiny")[:-1]
    out = merge_spellings([(spelled, -1.0), (other, -0.9), (ids, -2.0)], prompts)
    assert [c for c, _ in out] == [ids, other]  # the tokenizer's own pieces, best first
    assert out[0][1] == pytest.approx(math.log(math.exp(-1.0) + math.exp(-2.0)))
