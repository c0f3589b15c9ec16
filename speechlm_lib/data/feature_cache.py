"""Encoder states cached on disk, so a frozen encoder runs once per utterance.

With the encoder frozen, its output for a clip never changes, yet a training
run would recompute it every epoch (and every run). `FeatureCache` stores
``(frames, dim)`` states as one small safetensors file per utterance::

    <cache_dir>/features/<encoder>-<settings hash>/settings.json
    <cache_dir>/features/<encoder>-<settings hash>/ab/abcdef....safetensors

The folder is keyed by the encoder's `settings()` (name, hub id / path, options:
a different checkpoint or feature setting gets a different folder), the file
by a SHA-1 of the audio *content* (the file's bytes, or a waveform's samples),
so a renamed copy hits and an edited file misses. States are stored as float16
by default (half the disk; relative error ~1e-3, far below what training notices).

Because the encoders here mask padding, an utterance's states do not depend on
the batch it was computed in, so per-utterance caching is exact.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from speechlm_lib.config import cache_dir
from speechlm_lib.data.audio import AudioError, load_audio
from speechlm_lib.data.records import Report, Utterance


def settings_key(settings: dict) -> str:
    """A short stable hash of an encoder's settings dict."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def content_key(audio: str | Path | torch.Tensor) -> str:
    """SHA-1 of an audio file's bytes, or of a waveform tensor's float32 samples."""
    h = hashlib.sha1()
    if isinstance(audio, torch.Tensor):
        h.update(b"wave:" + audio.detach().float().cpu().contiguous().numpy().tobytes())
    else:
        with open(audio, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class FeatureCache:
    """Per-utterance encoder states on disk for one encoder configuration.

    Args:
        settings: the encoder's `settings()` (must include ``"encoder"``).
        root: cache root (default ``config.cache_dir() / "features"``).
        dtype: storage dtype (float16 default; float32 for bit-exact reuse).
    """

    def __init__(self, settings: dict, root: str | Path | None = None, dtype: torch.dtype = torch.float16):
        self.settings = dict(settings)
        self.dtype = dtype
        root = Path(root) if root is not None else cache_dir() / "features"
        self.dir = root / f"{self.settings.get('encoder', 'encoder')}-{settings_key(self.settings)}"
        self.hits = 0  # lookups served from disk
        self.misses = 0  # lookups that found nothing
        self._keys: dict[str, str] = {}  # audio path -> content key (files are hashed once a process)

    @classmethod
    def for_encoder(cls, encoder, root: str | Path | None = None, dtype: torch.dtype = torch.float16):
        """A cache keyed by `encoder.settings()`."""
        return cls(encoder.settings(), root=root, dtype=dtype)

    def key(self, audio: str | Path | torch.Tensor) -> str:
        if isinstance(audio, torch.Tensor):
            return content_key(audio)
        path = str(audio)
        if path not in self._keys:
            self._keys[path] = content_key(path)
        return self._keys[path]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, audio: str | Path | torch.Tensor) -> torch.Tensor | None:
        """Cached ``(frames, dim)`` float32 states for `audio`, or None (counted as a miss)."""
        p = self.path(self.key(audio))
        if not p.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return load_file(str(p))["states"].float()

    def put(self, audio: str | Path | torch.Tensor, states: torch.Tensor) -> Path:
        """Store ``(frames, dim)`` states for `audio` (atomic write); returns the file."""
        if states.dim() != 2:
            raise ValueError(f"expected (frames, dim) states, got shape {tuple(states.shape)}")
        p = self.path(self.key(audio))
        p.parent.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "settings.json").is_file():
            (self.dir / "settings.json").write_text(json.dumps(self.settings, indent=2, sort_keys=True))
        tmp = p.with_suffix(".tmp")
        save_file({"states": states.detach().to("cpu", self.dtype).contiguous()}, str(tmp))
        tmp.replace(p)
        return p

    def __contains__(self, audio) -> bool:
        try:
            return self.path(self.key(audio)).is_file()
        except OSError:  # unreadable audio file: not cached (loading it will name the problem)
            return False

    @torch.no_grad()
    def fill(self, utts: list[Utterance], encoder, batch_size: int = 8, report: Report | None = None,
             device: torch.device | str | None = None, progress: bool = True) -> list[Utterance]:
        """Encode every utterance not cached yet (batched, longest first); return the usable ones (in order).

        Unreadable / too-long audio is skipped and named in `report`.
        """
        report = report if report is not None else Report()
        todo = sorted((u for u in utts if u.audio not in self), key=lambda u: -u.duration)
        bad: set[str] = set()
        device = device or next(encoder.parameters()).device
        encoder.eval()
        for i in tqdm(range(0, len(todo), batch_size), desc="encode+cache", disable=not progress or not todo):
            batch = []
            for u in todo[i: i + batch_size]:
                try:
                    batch.append((u, encoder.featurize(load_audio(u.audio, max_seconds=encoder.max_seconds))))
                except (AudioError, ValueError) as e:
                    report.skip(u.id, str(e))
                    bad.add(u.id)
            if not batch:
                continue
            inputs, lengths = encoder.collate([f for _, f in batch])
            states, out_lengths = encoder(inputs.to(device), lengths.to(device))
            for (u, _), s, n in zip(batch, states, out_lengths):
                self.put(u.audio, s[: int(n)])
        good = [u for u in utts if u.id not in bad]
        report.kept += len(good)
        return good

    def size_bytes(self) -> int:
        """Disk used by this cache folder."""
        return sum(p.stat().st_size for p in self.dir.rglob("*.safetensors")) if self.dir.is_dir() else 0
