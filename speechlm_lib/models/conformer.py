"""A Conformer speech encoder with a CTC head (stage 1 of the recipe).

    log-mel (batch, n_mels, frames)               100 frames/s
      -> per-utterance mean/variance normalization, SpecAugment (training only)
      -> ConvSubsampling: 2 x Conv2d(3x3, stride 2) -> (batch, frames/4, d_model)   25 frames/s
      -> torchaudio Conformer layers (padding masked) -> (batch, frames/4, d_model)   <- `encode`
      -> Linear CTC head -> logits (batch, frames/4, vocab)                            <- `forward`

Padding never leaks into valid frames (features, subsampling and every
convolution module are masked), so an utterance's encoding does not depend on
the batch it is in -- stage 2 may cache it per utterance.

`stack_frames` (frame stacking, the paper's "striding") lives here too: it is
how stage 2 shortens the encoder output before projecting it into the LLM.
`save_pretrained(dir)` writes ``config.json`` + ``model.safetensors`` (+
``vocab.json``); `ConformerCTC.from_pretrained(dir)` reads them back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file, save_file
from torch import nn

SUBSAMPLING = 4  # time reduction of the convolutional front end
INPUT_FRAME_RATE = 100.0  # log-mel frames per second (audio.log_mel)


@dataclass
class ConformerConfig:
    """Architecture of the CTC Conformer."""

    n_mels: int = 80  # log-mel bins of the input features
    d_model: int = 144  # width of the Conformer (encoder output dim)
    n_heads: int = 4  # attention heads
    ffn_dim: int = 576  # hidden size of the two macaron feed-forward modules
    n_layers: int = 6  # Conformer layers
    conv_kernel: int = 15  # depthwise convolution kernel (odd; 15 x 40 ms = 0.6 s)
    subsample_channels: int = 64  # channels of the two stride-2 Conv2d layers
    dropout: float = 0.1  # dropout in the Conformer layers and before the CTC head
    vocab_size: int = 29  # CTC output classes incl. the blank (set from the vocabulary)
    freq_masks: int = 2  # SpecAugment: frequency masks per utterance (training only)
    freq_width: int = 15  # SpecAugment: widest frequency mask (mel bins)
    time_masks: int = 2  # SpecAugment: time masks per utterance
    time_width: int = 40  # SpecAugment: widest time mask (input frames, 10 ms each)
    feature_norm: str = "utterance"  # 'utterance': per-utterance mean/variance normalization of each mel bin; 'none'

    @classmethod
    def preset(cls, name: str, **overrides) -> "ConformerConfig":
        """'tiny' (smoke / CI), 'small' (the 6-minute CPU run), 'base' (~4 M, longer CPU runs), 'large' (GPU).

        Profile names map to the encoder each stage-1 profile trains: smoke -> tiny, cpu -> small, gpu -> large.
        """
        name = {"smoke": "tiny", "cpu": "small", "gpu": "large"}.get(name, name)
        light_aug = dict(dropout=0.05, freq_masks=1, freq_width=10, time_masks=1, time_width=20)
        presets = {
            "tiny": dict(d_model=64, n_heads=2, ffn_dim=128, n_layers=2, conv_kernel=15, subsample_channels=32),
            "small": dict(d_model=96, n_heads=4, ffn_dim=384, n_layers=4, conv_kernel=15, subsample_channels=64,
                          **light_aug),
            "base": dict(d_model=144, n_heads=4, ffn_dim=576, n_layers=8, conv_kernel=15, subsample_channels=64),
            "large": dict(d_model=256, n_heads=4, ffn_dim=1024, n_layers=16, conv_kernel=31,
                          subsample_channels=256),
        }
        if name not in presets:
            raise KeyError(f"unknown Conformer preset {name!r}; known: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``(batch, frames)`` bool, True on valid frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def subsampled_lengths(lengths: torch.Tensor | int, times: int = 2):
    """Frames after `times` stride-2 convolutions (kernel 3, padding 1): ceil(n / 2) each time."""
    for _ in range(times):
        lengths = (lengths + 1) // 2
    return lengths


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every `k` consecutive frames (the paper's striding), zero-padding the tail.

    ``(batch, frames, dim)`` -> ``(batch, ceil(frames / k), k * dim)``; lengths -> ``ceil(lengths / k)``.
    Padding frames are zeroed first, so a stacked frame never mixes in another utterance's padding.
    """
    if k < 1:
        raise ValueError(f"stack_frames needs k >= 1, got {k}")
    b, t, d = x.shape
    x = x * frame_mask(lengths, t).unsqueeze(-1).to(x.dtype)
    pad = (-t) % k
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // k, k * d), (lengths + k - 1) // k


class ConvSubsampling(nn.Module):
    """Two stride-2 Conv2d layers over (time, mel): ``(batch, n_mels, frames)`` -> ``(batch, frames/4, d_model)``."""

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.out = nn.Linear(channels * subsampled_lengths(n_mels), d_model)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.transpose(1, 2).unsqueeze(1)  # (batch, 1, frames, n_mels)
        x = x * frame_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        x = F.relu(self.conv1(x))
        lengths = subsampled_lengths(lengths, 1)
        x = x * frame_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)  # keep padding at zero
        x = F.relu(self.conv2(x))
        lengths = subsampled_lengths(lengths, 1)
        b, c, t, f = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(b, t, c * f)), lengths


class SpecAugment(nn.Module):
    """Frequency and time masking (torchaudio) on ``(batch, n_mels, frames)``, independent per utterance."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.freq = nn.ModuleList(torchaudio.transforms.FrequencyMasking(cfg.freq_width, iid_masks=True)
                                  for _ in range(cfg.freq_masks))
        self.time = nn.ModuleList(torchaudio.transforms.TimeMasking(cfg.time_width, iid_masks=True, p=0.2)
                                  for _ in range(cfg.time_masks))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.unsqueeze(1)  # iid masks want (batch, channel, freq, time)
        for m in [*self.freq, *self.time]:
            x = m(x)
        return x.squeeze(1)


class ConformerCTC(nn.Module):
    """Conformer encoder + CTC head. See the module docstring for the data flow."""

    def __init__(self, config: ConformerConfig, vocab=None):
        super().__init__()
        self.config = config
        self.vocab = vocab  # optional: a speechlm_lib.models.vocab vocabulary, saved with the model
        self.spec_augment = SpecAugment(config)
        self.subsample = ConvSubsampling(config.n_mels, config.subsample_channels, config.d_model)
        self.conformer = torchaudio.models.Conformer(
            input_dim=config.d_model, num_heads=config.n_heads, ffn_dim=config.ffn_dim,
            num_layers=config.n_layers, depthwise_conv_kernel_size=config.conv_kernel, dropout=config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    dim = property(lambda self: self.config.d_model)  # encoder output dim
    subsampling = SUBSAMPLING  # input frames per encoder frame
    frame_rate = INPUT_FRAME_RATE / SUBSAMPLING  # encoder frames per second (25)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def output_lengths(feature_lengths):
        """Encoder frames for `feature_lengths` input frames (int or tensor)."""
        return subsampled_lengths(feature_lengths)

    def normalize(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-utterance mean/variance normalization of each mel bin over its valid frames (padding -> 0)."""
        if self.config.feature_norm == "none":
            return features
        mask = frame_mask(lengths, features.shape[-1]).unsqueeze(1).to(features.dtype)  # (batch, 1, frames)
        n = mask.sum(-1, keepdim=True).clamp(min=1)
        mean = (features * mask).sum(-1, keepdim=True) / n
        var = (((features - mean) * mask) ** 2).sum(-1, keepdim=True) / n
        return (features - mean) / (var + 1e-5).sqrt() * mask

    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, n_mels, frames)`` + ``(batch,)`` -> states ``(batch, frames/4, d_model)``, lengths ``(batch,)``."""
        return self._encode(self.normalize(features, feature_lengths), feature_lengths)

    def _encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsample(features, feature_lengths)
        pad = ~frame_mask(lengths, x.shape[1])  # (batch, frames') True on padding
        x = x.transpose(0, 1)  # torchaudio layers work on (frames, batch, dim)
        for layer in self.conformer.conformer_layers:
            x = _masked_layer(layer, x, pad)
        return x.transpose(0, 1).masked_fill(pad.unsqueeze(-1), 0.0), lengths

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor, labels: torch.Tensor | None = None,
                label_lengths: torch.Tensor | None = None, **_unused) -> dict:
        """CTC logits ``(batch, frames/4, vocab)`` and their lengths; ``loss`` when labels are given.

        labels: ``(batch, max_label_len)`` padded ids (never 0 = blank); label_lengths ``(batch,)``.
        The loss is PyTorch's CTC loss (mean over the batch of per-token losses) with
        ``zero_infinity=True`` as a last guard (infeasible utterances are filtered before).
        """
        features = self.normalize(features, feature_lengths)
        if self.training:
            features = self.spec_augment(features)
        x, lengths = self._encode(features, feature_lengths)
        logits = self.head(self.dropout(x))
        out = {"logits": logits, "lengths": lengths}
        if labels is not None:
            log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (frames, batch, vocab)
            out["loss"] = F.ctc_loss(log_probs, labels, lengths, label_lengths, blank=0,
                                     reduction="mean", zero_infinity=True)
        return out

    # ----- save / load ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and (if any) ``vocab.json`` to `directory`.

        Raises ValueError naming the tensors if a weight or buffer (BatchNorm statistics) is NaN/inf:
        a poisoned model is never saved."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        _check_finite(state, f"{directory}: refusing to save")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        save_file(state, str(directory / "model.safetensors"))
        if self.vocab is not None:
            (directory / "vocab.json").write_text(json.dumps(self.vocab.to_dict()))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ConformerCTC":
        """Load a model written by `save_pretrained` (on CPU, in eval mode)."""
        directory = Path(directory)
        cfg_path, weights = directory / "config.json", directory / "model.safetensors"
        for p in (cfg_path, weights):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing (expected a ConformerCTC.save_pretrained folder)")
        known = {f.name for f in fields(ConformerConfig)}
        config = ConformerConfig(**{k: v for k, v in json.loads(cfg_path.read_text()).items() if k in known})
        vocab = None
        if (directory / "vocab.json").is_file():
            from speechlm_lib.models.vocab import vocab_from_dict
            vocab = vocab_from_dict(json.loads((directory / "vocab.json").read_text()))
        model = cls(config, vocab=vocab)
        state = load_file(str(weights))
        _check_finite(state, f"{weights}: unusable")
        model.load_state_dict(state)
        return model.eval()


def _check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ValueError (`what`: the file and verb) naming the tensors of `state` holding NaN or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{what}: {len(bad)} tensor(s) hold NaN or inf, e.g. {', '.join(bad[:3])} "
                         "(a NaN batch reached the weights or BatchNorm statistics)")


def _masked_layer(layer, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """torchaudio `ConformerLayer.forward` with padding zeroed before the depthwise convolution.

    x: ``(frames, batch, dim)``; pad: ``(batch, frames)`` True on padding.
    """
    x = x + 0.5 * layer.ffn1(x)
    res = x
    h = layer.self_attn_layer_norm(x)
    h, _ = layer.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)
    x = res + layer.self_attn_dropout(h)
    x = x + _masked_conv(layer.conv_module, x.transpose(0, 1), pad).transpose(0, 1)
    x = x + 0.5 * layer.ffn2(x)
    return layer.final_layer_norm(x)


def _masked_conv(conv, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """torchaudio `_ConvolutionModule` on ``(batch, frames, dim)`` with padding zeroed after the GLU."""
    pointwise1, glu, depthwise, *rest = conv.sequential
    h = glu(pointwise1(conv.layer_norm(x).transpose(1, 2)))  # (batch, dim, frames)
    h = h.masked_fill(pad.unsqueeze(1), 0.0)
    h = depthwise(h)
    for m in rest:
        h = m(h)
    return h.transpose(1, 2)
