"""Cross-fitted projector tokens: training tokens that carry the errors of unseen voices (stage 3's exposure).

The problem (docs/real_speech_findings.md): after CTC re-alignment the projector transcribes its own
training utterances almost perfectly (train WER about 0 %, test WER about 46 %), so adapters trained on
its tokens learn to copy and never meet the errors they must repair at test time. Sampling its posteriors
or masking its input in train mode does not close that gap (train WER stays near 10 %).

Cross-fitting, as in stacked generalisation: split the training speakers into K folds; for each fold,
re-align a copy of the *starting* projector on the other K - 1 folds and let it transcribe the held-out
fold. Every training utterance then gets tokens from a projector that never heard its speaker -- the
same kind of tokens the full projector gives a test speaker::

    speakers:   [ fold 0 ][ fold 1 ]
    projector 0 trains on fold 1  ->  tokens of fold 0
    projector 1 trains on fold 0  ->  tokens of fold 1
    the full projector trains on both (as before) and is the one used at test time

The LLM then trains on these token ids (`TaskDataset(audio_tokens=...)`, `SpeechLM.forward(audio_ids=...)`)
instead of the projector's live output, so the projector must stay frozen while the adapters train.
A fold projector trains ``realign.max_steps * (K - 1) / K`` updates: the full projector's epochs on its
share of the data. Enabled by ``exposure.cross_fit_folds: K`` (K >= 2) in a stage-3 config with ``realign``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace

from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.realdata import split_by_speaker
from speechlm_lib.data.records import Utterance
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
from speechlm_lib.decoding.ctc import projector_transcripts
from speechlm_lib.metrics import wer


def speaker_folds(utts: list[Utterance], k: int, seed: int = 0) -> list[list[Utterance]]:
    """`utts` in `k` speaker-disjoint folds of about equal numbers of speakers (never split a speaker)."""
    speakers = {u.speaker for u in utts}
    if k < 2 or len(speakers) < k:
        raise ValueError(f"cross-fitting needs k >= 2 folds and at least k speakers; got k={k} and "
                         f"{len(speakers)} speaker(s)")
    return list(split_by_speaker(utts, {str(i): 1.0 for i in range(k)}, seed=seed).values())


def cross_fitted_tokens(cfg, model, train: list[Utterance], cache: FeatureCache | None = None) -> dict:
    """Tokens of every utterance of `train` from a fold projector that never heard its speaker.

    `cfg` is a `Stage3Config` with ``realign`` and ``exposure.cross_fit_folds`` = K; `model` a `SpeechLM`
    with the ``ctc`` projector as it is *before* re-alignment (it is left exactly as it was). Returns
    ``{"tokens": {utterance id: [LLM token ids]}, "fold_wer": [WER of each fold's tokens], "wer": pooled,
    "seconds"}``. The pooled WER is the training tokens' error rate: it should be near the test WER.
    """
    from speechlm_lib.recipes.stage3_lora import realign_projector

    k = cfg.exposure.cross_fit_folds
    if cfg.realign is None:
        raise ValueError("exposure.cross_fit_folds needs realign: the fold projectors are re-aligned copies")
    if cfg.train_projector:
        raise ValueError("exposure.cross_fit_folds needs train_projector: false (the LLM trains on fixed tokens)")
    t0 = time.perf_counter()
    folds = speaker_folds(train, k, seed=cfg.train.seed)
    steps = max(1, round(cfg.realign.max_steps * (k - 1) / k))
    fold_cfg = replace(cfg, realign=replace(cfg.realign, max_steps=steps, eval_every=0, output_dir=None))
    start, tokens, refs, hyps, fold_wer = model.projector, {}, [], [], []
    try:
        for i, held in enumerate(folds):
            model.projector = copy.deepcopy(start)
            realign_projector(fold_cfg, model, [u for j, f in enumerate(folds) if j != i for u in f], (), cache)
            model.projector.eval()
            out = projector_transcripts(model, SpeechLMDataset(held, model.encoder, model.prompts, cache=cache))
            tokens.update(zip(out["ids"], out["tokens"]))
            fold_wer.append(wer(out["refs"], out["hyps"]))
            refs, hyps = refs + out["refs"], hyps + out["hyps"]
    finally:
        model.projector = start
    return {"tokens": tokens, "fold_wer": fold_wer, "wer": wer(refs, hyps), "seconds": time.perf_counter() - t0}
