"""Speech encoders behind one interface, chosen by name from `ENCODERS`.

Every encoder is an ``nn.Module`` with

* ``dim``          -- size of an output frame;
* ``frame_rate``   -- output frames per second of audio;
* ``max_seconds``  -- the longest input it takes (None: no limit);
* ``settings()``   -- a JSON dict naming it fully (``encoder`` registry name, ``name`` =
                      hub id / path, ``options`` = builder keywords, derived facts): the
                      feature-cache key and what `SpeechLM.save_pretrained` writes;
* ``featurize(wave)``      -- ``(samples,)`` at 16 kHz -> its input for one utterance,
                              time on the last axis;
* ``collate(items)``       -- zero-pads those along time: ``inputs, input_lengths``;
* ``forward(inputs, input_lengths)`` -> ``(batch, frames, dim)``, ``lengths (batch,)``.

Encoders:

* ``whisper``  -- Whisper's encoder (any ``openai/whisper-*``) on **variable-length**
  input. Transformers' `WhisperEncoder.forward` insists on 3000 mel frames (30 s);
  we run its layers ourselves instead. Convention: log-mel frames are padded with
  zeros only to an even count (one utterance) or to the batch maximum; positional
  embeddings are ``embed_positions[0:frames/2]`` (positions start at 0, as in a
  padded clip); padded frames are masked out of self-attention. A clip therefore
  encodes the same alone or in a batch, and costs time proportional to its length
  (5 s: ~20 ms instead of 144 ms for 30 s on this CPU). `whisper_baseline` checks
  that Whisper's own decoder still transcribes from these shorter states. Option
  ``dtype="auto"`` computes in bfloat16 where that is faster (the presets' choice: on a CPU
  with AMX it took 0.37 x the time; `benchmarks/bench_encoder_dtype.py`), states float32.
* ``conformer`` -- the stage-1 CTC Conformer saved in a directory.
* ``wav2vec2`` / ``hubert`` -- any Hugging Face `AutoModel` audio encoder (hub id or dir).
"""
from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from speechlm_lib.data.audio import log_mel
from speechlm_lib.models.projectors import frame_mask
from speechlm_lib.registry import Registry

ENCODERS = Registry("encoder")


def pad_last(items: list[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad tensors ``(..., time_i)`` to ``(batch, ..., max_time)``; returns (padded, lengths)."""
    lengths = torch.tensor([x.shape[-1] for x in items], dtype=torch.long)
    t = int(lengths.max()) if len(items) else 0
    t += (-t) % multiple
    out = items[0].new_zeros((len(items), *items[0].shape[:-1], t))
    for i, x in enumerate(items):
        out[i, ..., : x.shape[-1]] = x
    return out, lengths


class SpeechEncoder(nn.Module):
    """Base class: the shared interface (see the module docstring)."""

    name = "base"
    dim: int
    frame_rate: float
    max_seconds: float | None = None

    def settings(self) -> dict:
        raise NotImplementedError

    def featurize(self, wave: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def collate(self, items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_last(items)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_duration(self, wave: torch.Tensor, what: str = "audio") -> None:
        """Raise ValueError naming `what` if `wave` is longer than `max_seconds`."""
        seconds = wave.shape[-1] / 16000
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise ValueError(f"{what}: duration {seconds:.1f} s is over the {self.name} encoder's maximum "
                             f"of {self.max_seconds:.0f} s (split it into shorter segments)")


# -- Whisper ------------------------------------------------------------------
class WhisperSpeechEncoder(SpeechEncoder):
    """Whisper's encoder on unpadded, variable-length log-mel input.

    ``pad_to_30s=True`` is the stock behaviour, for comparison: every clip is padded
    to 3000 mel frames with Whisper's silence value (the clip's floor, max - 2 in
    scaled log-mel units), all 1500 positions are encoded, and only the clip's own
    ``ceil(frames / 2)`` states are returned -- same shapes, 30-s context, ~7x the cost.
    """

    name = "whisper"

    def __init__(self, encoder, reference: str, pad_to_30s: bool = False, dtype: str | None = None):
        super().__init__()
        self.encoder = encoder  # a transformers WhisperEncoder, in the precision it computes in
        self.reference = reference
        self.pad_to_30s = pad_to_30s
        self.dtype_option = dtype  # the precision asked for (None = float32, "auto", "bfloat16"): saved with a model
        cfg = encoder.config
        self.n_mels = cfg.num_mel_bins
        self.dim = cfg.d_model
        self.frame_rate = 50.0  # 100 mel frames/s, conv2 has stride 2
        self.max_seconds = cfg.max_source_positions * 2 / 100.0  # 30 s

    def settings(self) -> dict:
        options = {"pad_to_30s": self.pad_to_30s, **({"dtype": self.dtype_option} if self.dtype_option else {})}
        out = {"encoder": self.name, "name": self.reference, "n_mels": self.n_mels, "convention": "unpadded-v1",
               "options": options, "fingerprint": dir_fingerprint(self.reference)}
        computes = self.encoder.conv1.weight.dtype
        return out if computes == torch.float32 else {**out, "computes_in": str(computes).replace("torch.", "")}

    def featurize(self, wave: torch.Tensor) -> torch.Tensor:
        """``(samples,)`` -> log-mel ``(n_mels, frames)``, frames rounded up to even with zeros."""
        self.check_duration(wave)
        mel = log_mel(wave, self.n_mels)
        return nn.functional.pad(mel, (0, mel.shape[-1] % 2))

    def collate(self, items):
        return pad_last(items, multiple=2)

    def forward(self, inputs: torch.Tensor, input_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, n_mels, frames)`` + lengths -> float32 ``(batch, frames / 2, dim)``, ``ceil(lengths / 2)``
        (computed in the encoder's own precision)."""
        enc = self.encoder
        if inputs.shape[-1] % 2 or inputs.shape[-1] > 2 * enc.config.max_source_positions:
            raise ValueError(f"whisper encoder needs an even number of mel frames <= "
                             f"{2 * enc.config.max_source_positions}, got {inputs.shape[-1]}")
        lengths = torch.div(input_lengths.to(inputs.device) + 1, 2, rounding_mode="floor")
        frames = inputs.shape[-1] // 2
        if self.pad_to_30s:
            inputs = _pad_with_silence(inputs, input_lengths.to(inputs.device), 2 * enc.config.max_source_positions)
            lengths = torch.full_like(lengths, enc.config.max_source_positions)  # every position is "real"
        x = nn.functional.gelu(enc.conv1(inputs.to(enc.conv1.weight.dtype)))
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)  # (batch, frames, dim)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        keep = frame_mask(lengths, x.shape[1])
        bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
        bias = bias[:, None, None, :]  # (batch, 1, 1, frames): padded keys masked out
        for layer in enc.layers:
            x = layer(x, bias)
        if self.pad_to_30s:
            x, lengths = x[:, :frames], torch.div(input_lengths.to(x.device) + 1, 2, rounding_mode="floor")
        return enc.layer_norm(x).float(), lengths


def _pad_with_silence(mel: torch.Tensor, lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """Pad ``(batch, n_mels, t)`` log-mel to `frames` with each clip's silence floor (its max - 2)."""
    valid = frame_mask(lengths, mel.shape[-1]).unsqueeze(1)  # (batch, 1, t)
    floor = mel.masked_fill(~valid, -1e9).amax(dim=(1, 2), keepdim=True) - 2.0  # log10 floor = peak - 8
    out = floor.expand(-1, mel.shape[1], frames).clone()
    out[..., : mel.shape[-1]] = torch.where(valid, mel, floor)
    return out


@ENCODERS.register("whisper")
def build_whisper(source: str = "openai/whisper-tiny.en", model=None, pad_to_30s: bool = False,
                  dtype: str | None = None) -> WhisperSpeechEncoder:
    """Whisper's encoder by hub id / dir (`sources.load_whisper`), or from a loaded `model`.

    `dtype`: the precision it computes in -- None = float32; ``"auto"`` = bfloat16 where that is faster here
    (`training.utils.resolve_dtype`: a GPU, or a CPU with AMX / AVX-512 BF16 that measures it faster), else
    float32; or a torch dtype name. Its states are returned as float32 either way. A loaded `model` in another
    precision is left as it is (it may be the float32 peer): the encoder gets a converted copy."""
    from speechlm_lib.training.utils import resolve_dtype

    want = resolve_dtype(dtype) or torch.float32
    if model is None:
        from speechlm_lib.models.sources import load_whisper

        model = load_whisper(source, dtype=want)[0]
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    if encoder.conv1.weight.dtype != want:
        encoder = copy.deepcopy(encoder).to(want)
    return WhisperSpeechEncoder(encoder, reference=source, pad_to_30s=pad_to_30s, dtype=dtype)


# -- stage-1 Conformer -----------------------------------------------------------
class ConformerSpeechEncoder(SpeechEncoder):
    """The stage-1 CTC Conformer (`conformer.ConformerCTC`): log-mel in, 25 states/s out."""

    name = "conformer"

    def __init__(self, model, reference: str):
        super().__init__()
        self.model = model
        self.reference = reference
        self.n_mels = model.config.n_mels
        self.dim = model.dim
        self.frame_rate = float(model.frame_rate)

    def settings(self) -> dict:
        return {"encoder": self.name, "name": self.reference, "n_mels": self.n_mels,
                "fingerprint": dir_fingerprint(self.reference)}

    def featurize(self, wave: torch.Tensor) -> torch.Tensor:
        """``(samples,)`` -> log-mel ``(n_mels, frames)``."""
        self.check_duration(wave)
        return log_mel(wave, self.n_mels)

    def forward(self, inputs, input_lengths):
        """``(batch, n_mels, frames)`` + lengths -> ``(batch, frames / 4, dim)``, lengths."""
        return self.model.encode(inputs, input_lengths.to(inputs.device))


def dir_fingerprint(path: str | Path) -> str | None:
    """A short hash of a model folder's weight files (name, size, mtime), None for a hub id.

    Part of the cache key, so retraining the model saved in the same folder invalidates its cache.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    h = hashlib.sha1()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


@ENCODERS.register("conformer")
def build_conformer(source: str) -> ConformerSpeechEncoder:
    """The stage-1 Conformer saved in directory `source` (``runs/<profile>/stage1_encoder``)."""
    if not Path(source).is_dir():
        raise FileNotFoundError(f"{source}: no stage-1 Conformer saved there "
                                "(run notebooks/01 or the stage-1 trainer first)")
    from speechlm_lib.models.conformer import ConformerCTC

    return ConformerSpeechEncoder(ConformerCTC.from_pretrained(source), reference=str(Path(source).resolve()))


# -- Hugging Face AutoModel audio encoders (wav2vec2, HuBERT, WavLM, ...) -----------
class HFAudioEncoder(SpeechEncoder):
    """Any HF waveform encoder: raw 16 kHz samples in, ``last_hidden_state`` out.

    The waveform is normalised to zero mean / unit variance when the model's feature
    extractor says so (`do_normalize`). An attention mask is passed only to models
    built with layer-norm feature extractors (wav2vec2-large style); group-norm
    models (wav2vec2-base, HuBERT-base) expect zero padding without a mask.
    """

    def __init__(self, model, reference: str, kind: str, normalize: bool = True):
        super().__init__()
        self.model, self.reference, self.name, self.normalize = model, reference, kind, normalize
        cfg = model.config
        self.dim = cfg.hidden_size
        self.frame_rate = 16000.0 / math.prod(cfg.conv_stride)
        self.use_mask = getattr(cfg, "feat_extract_norm", "layer") == "layer"

    def settings(self) -> dict:
        return {"encoder": self.name, "name": self.reference, "normalize": self.normalize,
                "fingerprint": dir_fingerprint(self.reference)}

    def featurize(self, wave: torch.Tensor) -> torch.Tensor:
        """``(samples,)`` -> ``(samples,)`` (normalised if the model expects it)."""
        self.check_duration(wave)
        wave = wave.float()
        return (wave - wave.mean()) / torch.sqrt(wave.var() + 1e-7) if self.normalize else wave

    def forward(self, inputs, input_lengths):
        """``(batch, samples)`` + lengths -> ``(batch, frames, dim)``, lengths."""
        mask = frame_mask(input_lengths.to(inputs.device), inputs.shape[-1]).long() if self.use_mask else None
        out = self.model(input_values=inputs.to(self.model.dtype), attention_mask=mask).last_hidden_state
        lengths = self.model._get_feat_extract_output_lengths(input_lengths).long().clamp(max=out.shape[1])
        return out, lengths.to(out.device)


def _build_hf(kind: str, source: str) -> HFAudioEncoder:
    from transformers import AutoFeatureExtractor, AutoModel

    model = AutoModel.from_pretrained(source)
    try:
        normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(source), "do_normalize", True))
    except (OSError, ValueError):
        normalize = True
    return HFAudioEncoder(model, reference=source, kind=kind, normalize=normalize)


@ENCODERS.register("wav2vec2")
def build_wav2vec2(source: str = "facebook/wav2vec2-base-960h") -> HFAudioEncoder:
    """A wav2vec2-family encoder by hub id or local dir."""
    return _build_hf("wav2vec2", source)


@ENCODERS.register("hubert")
def build_hubert(source: str = "facebook/hubert-base-ls960") -> HFAudioEncoder:
    """A HuBERT-family encoder by hub id or local dir."""
    return _build_hf("hubert", source)
