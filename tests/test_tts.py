"""eSpeak NG wrapper: audio format, voices, errors, resampler."""
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechlm_lib.data import audio, tts
from speechlm_lib.data.tts import Voice, synthesize

DATA = Path(__file__).parent / "data"


def test_output_is_non_silent_float32_at_16k():
    wave = synthesize("hello world, this is a test", "en-us")
    assert tts.OUTPUT_RATE == audio.SAMPLE_RATE == 16_000
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.5 < len(wave) / tts.OUTPUT_RATE < 5
    assert np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave ** 2)) > 0.01


def test_length_grows_with_text():
    short = synthesize("good morning", "en")
    long = synthesize("good morning, the meeting with the board starts at nine tomorrow", "en")
    assert len(long) > 2 * len(short)


def test_rate_changes_duration_and_voices_differ():
    slow = synthesize("a sentence of moderate length", Voice("en-gb-x-rp", rate=120))
    fast = synthesize("a sentence of moderate length", Voice("en-gb-x-rp", rate=260))
    assert len(fast) < 0.75 * len(slow)
    a = synthesize("same words", Voice("en-us", "m3"))
    b = synthesize("same words", Voice("en-gb-scotland", "f2"))
    assert len(a) != len(b) or not np.allclose(a, b)


def test_synthesis_is_exactly_repeatable():
    voice = Voice("en-gb-scotland", "f5", pitch=60, rate=170)  # f5 adds random breath noise
    first = synthesize("repeat after me, Zbigniew", voice)
    synthesize("something else in between", Voice("de", "m3"))
    assert np.array_equal(first, synthesize("repeat after me, Zbigniew", voice))


def test_unknown_voice_and_variant_are_named():
    with pytest.raises(ValueError, match="no-such-voice"):
        synthesize("hello", "no-such-voice")
    with pytest.raises(ValueError, match="zz9"):
        synthesize("hello", Voice("en-us", variant="zz9"))
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ", "en-us")


def test_voice_id_and_parse():
    v = Voice("en-gb-x-rp", "m5", pitch=55, rate=165)
    assert v.id == "en-gb-x-rp+m5_p55_r165" and v.language == "en"
    assert Voice("de", "f2").language == "de"
    p = Voice.parse("en-US+f3")
    assert (p.name, p.variant) == ("en-us", "f3")


def test_voice_and_variant_lists():
    en = tts.list_voices("en")
    assert {"en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029"} <= set(en)
    assert "de" not in en and "de" in tts.list_voices("de")
    assert {"m1", "m5", "f2"} <= set(tts.list_variants())


def _child_len(text):
    return len(synthesize(text, "en-us"))


def test_engine_works_in_forked_workers():
    synthesize("warm the parent engine", "en")
    with mp.get_context("fork").Pool(2) as pool:
        lens = pool.map(_child_len, ["one", "one two three four five six"])
    assert lens[1] > lens[0] > 0


def test_resampler_keeps_passband_and_removes_alias():
    t_in = np.arange(22050) / 22050
    y = tts.resample(np.sin(2 * np.pi * 1000 * t_in).astype(np.float32), 22050, 16000)
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert len(y) == 16000 and np.abs(y[100:-100] - ref[100:-100]).max() < 1e-3
    alias = tts.resample(np.sin(2 * np.pi * 10_000 * t_in).astype(np.float32), 22050, 16000)
    assert np.sqrt(np.mean(alias[100:-100] ** 2)) < 1e-2  # 10 kHz is above the new Nyquist


def test_committed_clip():
    data, sr = sf.read(DATA / "clip.wav")
    assert sr == 16_000 and data.ndim == 1 and 2.0 < len(data) / sr < 3.5
    assert (DATA / "clip.txt").read_text().strip() == "the quick brown fox jumps over the lazy dog"


def test_resampler_is_exact_whatever_the_summation_order():
    """The corpus must be bit-identical on every CPU and worker count: the float64 product of whole-number
    samples and taps equals the same product in exact integer arithmetic, whatever order BLAS sums in."""
    from math import gcd

    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, 22050 * 3).astype(np.int16)
    y = tts.resample(pcm, 22050, 16000)
    g = gcd(22050, 16000)
    up, down, h = 16000 // g, 22050 // g, 16
    w = tts._block_filter(up, down, h)
    assert np.array_equal(w, np.round(w))  # whole-number taps
    n_out = len(pcm) * up // down
    blocks = -(-n_out // up)
    padded = np.zeros(blocks * down + 2 * h, np.int64)
    padded[h - 1:h - 1 + len(pcm)] = pcm
    frames = np.lib.stride_tricks.sliding_window_view(padded, down + 2 * h)[::down][:blocks]
    exact = (frames @ w.astype(np.int64).T).reshape(-1)[:n_out]  # integer matmul: no rounding anywhere
    assert np.array_equal(y, (np.round(exact.astype(np.float64) / 2 ** tts.TAP_BITS) / 32768.0).astype(np.float32))
    assert np.array_equal(np.round(y.astype(np.float64) * 32768), y.astype(np.float64) * 32768)  # on the 16-bit grid
    assert np.array_equal(tts.resample(pcm.astype(np.float32) / 32768, 22050, 16000), y)  # floats on the grid: same
