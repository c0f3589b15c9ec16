"""Feature cache: keyed by audio content + encoder settings; hits, misses, bulk fill, dataset use."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from speechlm_lib.data.feature_cache import FeatureCache, content_key
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.prompting import PromptBuilder
from speechlm_lib.models.tiny_models import tiny_tokenizer, tiny_whisper


class Counting(torch.nn.Module):
    """Wraps an encoder and counts forward calls (to prove cache hits skip it)."""

    def __init__(self, enc):
        super().__init__()
        self.enc, self.calls = enc, 0
        self.max_seconds, self.name = enc.max_seconds, enc.name

    def settings(self):
        return self.enc.settings()

    def featurize(self, w):
        return self.enc.featurize(w)

    def collate(self, items):
        return self.enc.collate(items)

    def forward(self, x, n):
        self.calls += 1
        return self.enc(x, n)


@pytest.fixture(scope="module")
def encoder():
    return ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper()).eval()


def _wav(path, seconds, seed):
    sf.write(str(path), np.random.RandomState(seed).randn(int(16000 * seconds)).astype("float32") * 0.1, 16000)
    return path


def _utts(tmp_path, n=3):
    return [Utterance(id=f"u{i}", audio=str(_wav(tmp_path / f"u{i}.wav", 1 + 0.5 * i, i)), text="hello world",
                      duration=1 + 0.5 * i) for i in range(n)]


def test_put_then_get_round_trips_and_counts(tmp_path):
    cache = FeatureCache({"encoder": "x", "name": "a"}, root=tmp_path, dtype=torch.float32)
    wav = _wav(tmp_path / "a.wav", 0.5, 0)
    assert cache.get(wav) is None and cache.misses == 1
    states = torch.randn(7, 4)
    cache.put(wav, states)
    assert torch.equal(cache.get(wav), states) and cache.hits == 1
    assert wav in cache


def test_float16_storage_is_close(tmp_path):
    cache = FeatureCache({"encoder": "x"}, root=tmp_path)
    states = torch.randn(5, 3)
    cache.put(torch.ones(10), states)
    torch.testing.assert_close(cache.get(torch.ones(10)), states, atol=2e-3, rtol=2e-3)


def test_key_is_the_audio_content_not_the_file_name(tmp_path):
    cache = FeatureCache({"encoder": "x"}, root=tmp_path / "c")
    wav = _wav(tmp_path / "a.wav", 0.5, 0)
    cache.put(wav, torch.zeros(2, 2))
    copy = shutil.copy(wav, tmp_path / "renamed.wav")
    assert copy in cache  # same bytes, other name: hit
    other = _wav(tmp_path / "b.wav", 0.5, 1)
    assert other not in cache  # other content: miss
    assert content_key(wav) == content_key(copy) != content_key(other)


def test_other_encoder_settings_use_another_folder(tmp_path):
    wav = _wav(tmp_path / "a.wav", 0.5, 0)
    a = FeatureCache({"encoder": "whisper", "name": "tiny"}, root=tmp_path / "c")
    b = FeatureCache({"encoder": "whisper", "name": "base"}, root=tmp_path / "c")
    a.put(wav, torch.zeros(2, 2))
    assert wav in a and wav not in b and a.dir != b.dir
    assert (a.dir / "settings.json").is_file()


def test_fill_encodes_misses_once_and_skips_bad_files(tmp_path, encoder):
    utts = _utts(tmp_path)
    bad = Utterance(id="bad", audio=str(tmp_path / "missing.wav"), text="x", duration=1.0)
    counting = Counting(encoder)
    cache = FeatureCache.for_encoder(counting, root=tmp_path / "c")
    report = Report()
    kept = cache.fill(utts + [bad], counting, batch_size=2, report=report, progress=False)
    assert [u.id for u in kept] == ["u0", "u1", "u2"]
    assert [item for item, _ in report.skipped] == ["bad"] and "missing.wav" in report.skipped[0][1]
    calls = counting.calls
    assert calls == 2  # 3 utterances in batches of 2
    cache.fill(utts, counting, batch_size=2, progress=False)
    assert counting.calls == calls  # everything cached: the encoder is not called again


def test_cached_states_equal_a_fresh_encoding(tmp_path, encoder):
    utts = _utts(tmp_path)
    cache = FeatureCache.for_encoder(encoder, root=tmp_path / "c", dtype=torch.float32)
    cache.fill(utts, encoder, batch_size=3, progress=False)  # computed in a padded batch
    prompts = PromptBuilder(tiny_tokenizer())
    cached = SpeechLMDataset(utts, encoder, prompts, cache=cache)[0]["states"]
    raw = SpeechLMDataset(utts, encoder, prompts)[0]["features"]
    with torch.no_grad():
        fresh, n = encoder(*encoder.collate([raw]))
    torch.testing.assert_close(cached, fresh[0, : int(n)], atol=1e-4, rtol=1e-4)


def test_dataset_fills_a_cache_lazily(tmp_path, encoder):
    utts = _utts(tmp_path, 1)
    cache = FeatureCache.for_encoder(encoder, root=tmp_path / "c")
    ds = SpeechLMDataset(utts, encoder, PromptBuilder(tiny_tokenizer()), cache=cache)
    first = ds[0]["states"]
    assert utts[0].audio in cache
    torch.testing.assert_close(ds[0]["states"], first)
    assert cache.hits == 1 and cache.size_bytes() > 0
