"""Projectors: encoder frames -> LLM input embeddings, shortening the sequence.

Every projector maps ``(batch, frames, enc_dim)`` + ``lengths (batch,)`` to
``(batch, tokens, llm_dim)`` + ``token_lengths (batch,)``; frames past a
row's length are padding and never influence that row's valid tokens (so an
utterance projects the same alone or in a batch). Built by name::

    proj = PROJECTORS.build("linear", in_dim=384, out_dim=576, stride=5)

* ``linear``      -- SLAM-ASR: stack `stride` frames -> Linear -> ReLU -> Linear.
* ``conv1d``      -- a 3-wide convolution, then a strided convolution (kernel = stride = `stride`).
* ``qformer``     -- learned queries cross-attend to each window of `stride` frames
                     (`queries` tokens a window), window-level Q-Former as in SALMONN.
* ``transformer`` -- stack `stride` frames, then a small Transformer (SALM / SLM style adapter).
* ``ctc``         -- CTC posteriors over LLM tokens -> their embeddings, blanks dropped
                     (`ctc_projector`, which registers itself there; pre-aligned cheaply with a CTC loss).
"""
from __future__ import annotations

import torch
from torch import nn

from speechlm_lib.registry import Registry

PROJECTORS = Registry("projector")


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every `k` consecutive frames (zero-padding the tail).

    ``(batch, frames, dim)`` -> ``(batch, ceil(frames / k), k * dim)``; lengths -> ``ceil(lengths / k)``.
    """
    b, t, d = x.shape
    x = x * frame_mask(lengths, t).unsqueeze(-1).to(x.dtype)  # padding -> exact zeros
    pad = (-t) % k
    if pad:
        x = nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // k, k * d), torch.div(lengths + k - 1, k, rounding_mode="floor")


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``(batch, frames)`` bool, True on valid frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


class Projector(nn.Module):
    """Base: records its settings (for `save_pretrained`) and counts parameters."""

    name = "base"

    def __init__(self, in_dim: int, out_dim: int, stride: int, **settings):
        super().__init__()
        if stride < 1:
            raise ValueError(f"projector stride must be >= 1, got {stride}")
        self.in_dim, self.out_dim, self.stride = in_dim, out_dim, stride
        self.settings = {"in_dim": in_dim, "out_dim": out_dim, "stride": stride, **settings}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def bind(self, llm) -> None:
        """Called by `SpeechLM` with the LLM once both exist (the ``ctc`` projector copies embeddings)."""

    def project_and_guess(self, x: torch.Tensor, lengths: torch.Tensor):
        """`forward`, plus the LLM token ids this projector thinks ``(batch, frames, in_dim)`` says,
        per row, from the same run: ``(embeddings, lengths, guesses)``. Guesses are None when it
        cannot tell (decoding then has no draft to check; see `speculative`)."""
        return (*self(x, lengths), None)


@PROJECTORS.register("linear")
class LinearProjector(Projector):
    """SLAM-ASR's projector: stack `stride` frames, Linear -> ReLU -> Linear."""

    name = "linear"

    def __init__(self, in_dim: int, out_dim: int, stride: int = 5, hidden: int = 1024):
        super().__init__(in_dim, out_dim, stride, hidden=hidden)
        self.net = nn.Sequential(nn.Linear(in_dim * stride, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x, lengths):
        """``(batch, frames, in_dim)`` -> ``(batch, ceil(frames/stride), out_dim)``, lengths."""
        x, lengths = stack_frames(x, lengths, self.stride)
        return self.net(x), lengths


@PROJECTORS.register("conv1d")
class Conv1dProjector(Projector):
    """Convolutional downsampling: Conv(k=3) -> GELU -> Conv(kernel=stride=`stride`) -> GELU -> Linear."""

    name = "conv1d"

    def __init__(self, in_dim: int, out_dim: int, stride: int = 5, hidden: int = 512):
        super().__init__(in_dim, out_dim, stride, hidden=hidden)
        self.conv1 = nn.Conv1d(in_dim, hidden, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel_size=stride, stride=stride)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x, lengths):
        """``(batch, frames, in_dim)`` -> ``(batch, ceil(frames/stride), out_dim)``, lengths."""
        t = x.shape[1]
        mask = frame_mask(lengths, t).unsqueeze(1).to(x.dtype)  # (batch, 1, frames)
        h = x.transpose(1, 2) * mask
        h = nn.functional.gelu(self.conv1(h)) * mask  # re-zero padding before the strided conv
        pad = (-t) % self.stride
        h = nn.functional.gelu(self.conv2(nn.functional.pad(h, (0, pad))))
        return self.out(h.transpose(1, 2)), torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")


@PROJECTORS.register("qformer")
class QFormerProjector(Projector):
    """Window-level Q-Former: `queries` learned vectors cross-attend to each `stride`-frame window.

    Tokens per row = ``ceil(frames / stride) * queries``.
    """

    name = "qformer"

    def __init__(self, in_dim: int, out_dim: int, stride: int = 5, queries: int = 1, d_model: int = 256,
                 layers: int = 2, heads: int = 4):
        super().__init__(in_dim, out_dim, stride, queries=queries, d_model=d_model, layers=layers, heads=heads)
        self.queries = nn.Parameter(torch.randn(queries, d_model) * 0.02)
        self.frame_pos = nn.Parameter(torch.randn(stride, d_model) * 0.02)  # position inside a window
        self.inp = nn.Linear(in_dim, d_model)
        layer = nn.TransformerDecoderLayer(d_model, heads, 2 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, layers)
        self.out = nn.Linear(d_model, out_dim)

    def forward(self, x, lengths):
        """``(batch, frames, in_dim)`` -> ``(batch, windows * queries, out_dim)``, lengths."""
        b, k, q = x.shape[0], self.stride, self.queries.shape[0]
        h, win_lengths = stack_frames(self.inp(x), lengths, k)  # (b, windows, k * d)
        w = h.shape[1]
        mem = h.reshape(b * w, k, -1) + self.frame_pos  # (b * windows, k, d)
        frame_idx = torch.arange(w * k, device=x.device).reshape(1, w, k)
        pad = (frame_idx >= lengths[:, None, None]).reshape(b * w, k)
        pad[:, 0] = False  # an all-padding window still attends somewhere (its tokens are padding)
        tgt = self.queries.unsqueeze(0).expand(b * w, -1, -1)
        y = self.blocks(tgt, mem, memory_key_padding_mask=pad)  # (b * windows, q, d)
        return self.out(y.reshape(b, w * q, -1)), win_lengths * q


@PROJECTORS.register("transformer")
class TransformerProjector(Projector):
    """Stack `stride` frames -> Linear -> convolutional positions -> small Transformer -> Linear.

    With ``stride=1`` and ``out_dim == in_dim`` it is also the ``ctc`` projector's context block."""

    name = "transformer"

    def __init__(self, in_dim: int, out_dim: int, stride: int = 5, d_model: int = 256, layers: int = 2,
                 heads: int = 4, dropout: float = 0.0):
        super().__init__(in_dim, out_dim, stride, d_model=d_model, layers=layers, heads=heads, dropout=dropout)
        self.inp = nn.Linear(in_dim * stride, d_model)
        self.out = nn.Linear(d_model, out_dim)
        self.pos_conv = nn.Conv1d(d_model, d_model, kernel_size=5, padding=2, groups=d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x, lengths):
        """``(batch, frames, in_dim)`` -> ``(batch, ceil(frames/stride), out_dim)``, lengths."""
        h, lengths = stack_frames(x, lengths, self.stride)
        valid = frame_mask(lengths, h.shape[1])
        h = self.inp(h) * valid.unsqueeze(-1)
        h = h + self.pos_conv(h.transpose(1, 2)).transpose(1, 2)
        h = self.blocks(h, src_key_padding_mask=~valid)
        return self.out(h), lengths

