"""A ``ctc`` projector with several members: independent heads, each trained by its own CTC loss, averaged."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_whisper_ctc

from speechlm_lib.experiments.real_speech import start_model
from speechlm_lib.models.ctc_projector import CTCAlignment, CTCProjector, ctc_vocabulary
from speechlm_lib.models.projectors import stack_frames
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.recipes.stage3_lora import Stage3Config

TEXTS = ["hello world", "the quick brown fox", "you are tiny"]


def build(members: int):
    return tiny_whisper_ctc(TEXTS, members=members).eval()


@pytest.fixture(scope="module")
def model():
    return build(3)


def batch_of(model):
    targets = [model.prompts.target(t) for t in TEXTS]
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in targets], batch_first=True)
    return {"states": torch.randn(3, 40, model.encoder.dim), "state_lengths": torch.tensor([40, 30, 24]),
            "target_ids": ids, "target_lengths": torch.tensor([len(t) for t in targets])}


def test_the_posteriors_are_the_members_mean_log_posteriors(model):
    proj = model.projector
    assert len(proj.members) == 3 and len(proj.others) == 2
    x, n = torch.randn(2, 10, proj.in_dim), torch.tensor([10, 7])
    logits, m = proj.logits(x, n)
    each = [proj.member_logits(x, n, i)[0].float().log_softmax(-1) for i in range(3)]
    torch.testing.assert_close(logits.float(), torch.stack(each).mean(0))
    assert not torch.allclose(each[0], each[1])  # each head its own initialisation
    single = build(1).projector
    assert len(single.members) == 1 and not list(single.others)
    stacked, _ = stack_frames(x, n, single.stride)
    torch.testing.assert_close(single.logits(x, n)[0], single.classify(single.hidden(stacked)))  # as before


def test_alignment_trains_every_member_by_its_own_loss(model):
    import copy

    m = copy.deepcopy(model)
    objective = CTCAlignment(m).eval()
    batch = batch_of(m)
    loss = objective(**batch)["loss"]
    labels, lengths = objective.labels(batch["target_ids"], batch["target_lengths"])
    per_member = []
    for i in range(3):
        logits, n = m.projector.member_logits(batch["states"], batch["state_lengths"], i)
        per_member.append(torch.nn.functional.ctc_loss(logits.float().log_softmax(-1).transpose(0, 1), labels, n,
                                                       lengths, zero_infinity=True))
    torch.testing.assert_close(loss, torch.stack(per_member).mean())
    before = [h.classify.weight.clone() for h in m.projector.members]
    objective.train()
    opt = torch.optim.SGD(m.projector.parameters(), lr=0.1)
    objective(**batch)["loss"].backward()
    opt.step()
    assert all(not torch.equal(b, h.classify.weight) for b, h in zip(before, m.projector.members))


def test_members_grow_their_vocabulary_and_round_trip(model, tmp_path):
    import copy

    m = copy.deepcopy(model)
    proj = m.projector
    added = proj.extend_vocabulary(ctc_vocabulary(m.prompts, ["zebra quiz"]), m.llm)
    assert added > 0 and all(h.classify.out_features == len(proj.vocab) + 1 for h in proj.members)
    m.save_pretrained(tmp_path / "m")
    again = SpeechLM.from_pretrained(tmp_path / "m", encoder=m.encoder, llm=m.llm, tokenizer=m.prompts.tokenizer)
    assert isinstance(again.projector, CTCProjector) and len(again.projector.members) == 3
    x, n = torch.randn(1, 12, proj.in_dim), torch.tensor([12])
    torch.testing.assert_close(again.projector.eval().logits(x, n)[0], proj.eval().logits(x, n)[0])


def test_bad_member_settings_are_refused():
    with pytest.raises(ValueError, match="at least one member"):
        CTCProjector(8, 8, vocab_ids=[5, 6], members=0)
    cfg = Stage3Config.preset("smoke").override(["projector_members=2"])
    with pytest.raises(ValueError, match="scratch start"):
        start_model("synthetic", cfg, [], "smoke")
