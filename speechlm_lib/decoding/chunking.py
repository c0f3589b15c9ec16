"""Long audio in pieces the encoder takes (Whisper: at most 30 s), cut where it is quiet.

Where: a recording longer than ``max_seconds`` is cut into consecutive pieces of at most
``max_seconds``. Each cut is placed at the quietest 20-ms frame (lowest RMS) within the last
``search_seconds`` before the limit -- in speech, a pause between words or phrases -- so a word is
rarely split. How: the pieces are transcribed like any clip (batched with the others) and their
transcripts joined with a space in order. Overlap: none. Pieces that overlap would transcribe the
words in the overlap twice, and an LLM's two renderings of the same words need not match token for
token, so stitching them back (dropping the duplicate) is guesswork; a cut in a pause needs none.
The cost of no overlap: when there is no pause near the limit (continuous music, a speaker who never
stops), the cut falls inside a word and that word may be lost or garbled at the seam.
"""
from __future__ import annotations

import torch

from speechlm_lib.data.audio import SAMPLE_RATE

FRAME_SECONDS = 0.02  # the RMS frame the quietest point is searched in


def split_long(wave: torch.Tensor, max_seconds: float = 25.0, search_seconds: float = 3.0,
               sample_rate: int = SAMPLE_RATE) -> list[tuple[float, torch.Tensor]]:
    """Cut ``(samples,)`` into ``[(start_seconds, piece (samples_i,)), ...]``, every piece at most
    `max_seconds` long, cuts at the quietest frame of the last `search_seconds` before each limit.
    A wave no longer than `max_seconds` comes back whole."""
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    limit = int(max_seconds * sample_rate)
    search = min(int(search_seconds * sample_rate), limit // 2)
    frame = max(1, int(FRAME_SECONDS * sample_rate))
    pieces, start, n = [], 0, wave.shape[-1]
    while n - start > limit:
        cut = _quietest(wave, start + limit - search, start + limit, frame)
        pieces.append((start / sample_rate, wave[start:cut]))
        start = cut
    pieces.append((start / sample_rate, wave[start:]))
    return pieces


def _quietest(wave: torch.Tensor, lo: int, hi: int, frame: int) -> int:
    """The sample index in ``[lo, hi]`` at the middle of the lowest-RMS frame there (`hi` if none fits)."""
    window = wave[lo:hi]
    if window.shape[-1] < frame:
        return hi
    rms = window[: window.shape[-1] // frame * frame].reshape(-1, frame).pow(2).mean(-1)
    return lo + int(rms.argmin()) * frame + frame // 2
