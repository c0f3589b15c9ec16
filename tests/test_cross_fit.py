"""Cross-fitted projector tokens (recipes.cross_fit) with tiny random models: folds split by speaker, fold
projectors that never hear the speakers they transcribe, and token ids that stand in for the projector exactly."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import save_tiny_parts, tiny_ctc_speechlm, write_noise
from speechlm_lib.data.records import Utterance
from speechlm_lib.data.speechlm_dataset import Collate, SpeechLMDataset, TaskDataset
from speechlm_lib.data.tasks import task_items
from speechlm_lib.decoding.ctc import projector_transcripts
from speechlm_lib.recipes import cross_fit, stage3_lora
from speechlm_lib.recipes.stage3_lora import ExposureConfig, Stage3Config
from speechlm_lib.training.trainer import TrainConfig

TEXTS = ["hello world", "the quick brown fox", "you are tiny", "tiny words here", "hello tiny fox"]


def _utts(tmp_path, n=10, speakers=5):
    out = []
    for i in range(n):
        sec = 0.8 + 0.1 * i
        path = tmp_path / f"u{i}.wav"
        write_noise(path, sec, seed=i)
        out.append(Utterance(id=f"u{i}", audio=str(path), text=TEXTS[i % len(TEXTS)], duration=sec,
                             speaker=f"s{i % speakers}"))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_ctc_speechlm(save_tiny_parts(tmp_path_factory.mktemp("parts")), TEXTS[:2]).eval()


def test_speaker_folds_never_split_a_speaker(tmp_path):
    utts = _utts(tmp_path, n=10, speakers=5)
    folds = cross_fit.speaker_folds(utts, 2)
    speakers = [{u.speaker for u in f} for f in folds]
    assert not speakers[0] & speakers[1] and speakers[0] | speakers[1] == {f"s{i}" for i in range(5)}
    assert sorted(len(s) for s in speakers) == [2, 3] and sum(map(len, folds)) == len(utts)
    with pytest.raises(ValueError, match="at least k speakers"):
        cross_fit.speaker_folds(utts[:1], 2)


def test_token_ids_stand_in_for_the_projector_exactly(model, tmp_path):
    """The loss from the projector's own best-path tokens given as ``audio_ids`` equals the loss from the audio:
    a hard-token projector feeds the LLM exactly those tokens' embeddings."""
    utts = _utts(tmp_path, n=4)
    tokens = dict(zip(*(lambda o: (o["ids"], o["tokens"]))(
        projector_transcripts(model, SpeechLMDataset(utts, model.encoder, model.prompts)))))
    pairs = task_items({"asr_en": 1.0}, utts)
    collate = Collate(model.encoder, model.prompts.pad_id)
    from_audio = TaskDataset(pairs, model.encoder, model.prompts)
    from_ids = TaskDataset(pairs, model.encoder, model.prompts, audio_tokens=tokens)
    a, b = collate([from_audio[i] for i in range(4)]), collate([from_ids[i] for i in range(4)])
    assert "audio_ids" in b and "features" not in b and "states" not in b
    with torch.no_grad():
        torch.testing.assert_close(model(**a)["loss"], model(**b)["loss"])
    with pytest.raises(ValueError, match="no tokens for 1 utterance"):
        TaskDataset(pairs, model.encoder, model.prompts, audio_tokens={k: v for k, v in tokens.items() if k != "u0"})


def test_each_fold_projector_is_trained_without_the_speakers_it_transcribes(model, tmp_path, monkeypatch):
    utts = _utts(tmp_path, n=10, speakers=5)
    trained_on, real = [], stage3_lora.realign_projector

    def spy(cfg, m, train, *args, **kwargs):
        trained_on.append({u.speaker for u in train})
        assert m.projector is not model_projector  # a copy, never the model's own projector
        return real(cfg, m, train, *args, **kwargs)

    monkeypatch.setattr(stage3_lora, "realign_projector", spy)
    model_projector = model.projector
    before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    cfg = replace(Stage3Config(), realign=TrainConfig(max_steps=4, eval_every=0, lr=1e-3, progress=False),
                  realign_batch_size=4, exposure=ExposureConfig(cross_fit_folds=2))
    out = cross_fit.cross_fitted_tokens(cfg, model, utts)
    assert set(out["tokens"]) == {u.id for u in utts} and len(out["fold_wer"]) == 2 and 0 <= out["wer"]
    folds = cross_fit.speaker_folds(utts, 2, seed=cfg.train.seed)
    for fold, speakers in zip(folds, trained_on):
        assert not {u.speaker for u in fold} & speakers  # the held-out fold's speakers were never heard
    assert model.projector is model_projector  # the model's projector is back, unchanged
    assert all(torch.equal(before[k], v) for k, v in model.projector.state_dict().items())
    with pytest.raises(ValueError, match="train_projector"):
        cross_fit.cross_fitted_tokens(replace(cfg, train_projector=True), model, utts)


def test_prepare_projector_cross_fits_from_the_starting_projector_then_realigns(model, tmp_path, monkeypatch):
    """The order matters: fold projectors must be copies of the projector *before* re-alignment (after it, the
    full projector has heard every fold's speakers)."""
    import copy

    utts = _utts(tmp_path, n=10, speakers=5)
    m = copy.deepcopy(model)
    start = m.projector
    before = {k: v.clone() for k, v in start.state_dict().items()}
    copied_from, real_deepcopy = [], cross_fit.copy.deepcopy

    def spy(obj, *args):
        if obj is start:
            copied_from.append(all(torch.equal(before[k], v) for k, v in obj.state_dict().items()))
        return real_deepcopy(obj, *args)

    monkeypatch.setattr(cross_fit.copy, "deepcopy", spy)
    cfg = replace(Stage3Config(), realign=TrainConfig(max_steps=4, eval_every=0, lr=1e-2, progress=False),
                  realign_batch_size=4, exposure=ExposureConfig(cross_fit_folds=2))
    out = stage3_lora.prepare_projector(cfg, m, utts, cache=None)
    assert copied_from == [True, True]  # both folds copied the untouched starting projector
    assert set(out["cross_fit"]["tokens"]) == {u.id for u in utts} and out["realign"]["final"]["step"] == 4
    assert m.projector is start  # the model's own projector, then re-aligned
    assert any(not torch.equal(before[k], v) for k, v in m.projector.state_dict().items())
    off = stage3_lora.prepare_projector(replace(cfg, realign=None, exposure=ExposureConfig()), m, utts)
    assert off == {"cross_fit": None, "realign": None}
