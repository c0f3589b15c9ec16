"""Encoder states cached on disk, so a frozen encoder runs once per utterance.

With the encoder frozen, its output for a clip never changes, yet a training
run would recompute it every epoch (and every run). `FeatureCache` stores
``(frames, dim)`` states as one small safetensors file per utterance::

    <cache_dir>/features/<encoder>-<settings hash>/settings.json
    <cache_dir>/features/<encoder>-<settings hash>/ab/abcdef....safetensors

The folder is keyed by the encoder's `settings()` (name, hub id / path, options) **and the
identity of its weights** (`weights_fingerprint`, a hash of every tensor: the hub's Whisper
and the offline converted copy share a name, not a key), the file by a SHA-1 of the audio
*content* (the file's bytes, or a waveform's samples), so a renamed copy hits and an edited
file misses. Audio files pass `audio.check_file` before they are hashed (no endless reads).

Every entry carries, in its safetensors metadata, the content key it belongs to, its shape
and a SHA-256 of its bytes, and is written atomically. A read checks all three: a
truncated, corrupted or misplaced entry (another clip's states) is never used -- it is
deleted, counted in ``bad`` and named in ``report``, and the states are recomputed.
States are stored as float16 by default (half the disk; relative error ~1e-3, far below
what training notices).

Because the encoders here mask padding, an utterance's states do not depend on
the batch it was computed in, so per-utterance caching is exact.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file
from tqdm.auto import tqdm

from speechlm_lib.config import cache_dir
from speechlm_lib.data import audio as audio_mod
from speechlm_lib.data.audio import AudioError, check_file, load_audio
from speechlm_lib.data.records import Report, Utterance

ENTRY_FORMAT = "2"  # entry layout: "states" + metadata {format, key, shape, sha256}


def settings_key(settings: dict) -> str:
    """A short stable hash of an encoder's settings dict."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def content_key(audio: str | Path | torch.Tensor, max_bytes: int | None = None) -> str:
    """SHA-1 of an audio file's bytes, or of a waveform tensor's float32 samples.

    A file must pass `audio.check_file` first (a regular file of at most `max_bytes`, default
    `audio.MAX_FILE_BYTES`), and
    no more than `max_bytes` are ever read: `/dev/zero` or a FIFO raises `AudioError`, never hangs.
    """
    h = hashlib.sha1()
    if isinstance(audio, torch.Tensor):
        h.update(b"wave:" + audio.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    path, total = check_file(audio, max_bytes), 0
    max_bytes = audio_mod.MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                total += len(block)
                if total > max_bytes:
                    raise AudioError(f"{path}: grew past the {max_bytes}-byte limit while being read")
                h.update(block)
    except OSError as e:
        raise AudioError(f"{path}: cannot be read ({e.strerror or e})") from e
    return h.hexdigest()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short SHA-1 of a module's state dict (names, dtypes, shapes and bytes): the weights' identity."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _digest(states: torch.Tensor) -> str:
    return hashlib.sha256(states.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


class FeatureCache:
    """Per-utterance encoder states on disk for one encoder configuration.

    Args:
        settings: the encoder's `settings()` (must include ``"encoder"``); `for_encoder` adds
            the weights' fingerprint.
        root: cache root (default ``config.cache_dir() / "features"``).
        dtype: storage dtype (float16 default; float32 for bit-exact reuse).
    """

    def __init__(self, settings: dict, root: str | Path | None = None, dtype: torch.dtype = torch.float16):
        self.settings = dict(settings)
        self.dtype = dtype
        root = Path(root) if root is not None else cache_dir() / "features"
        self.dir = root / f"{self.settings.get('encoder', 'encoder')}-{settings_key(self.settings)}"
        self.hits = 0  # lookups served from disk
        self.misses = 0  # lookups that found nothing usable
        self.bad = 0  # entries found truncated / corrupted / misplaced: deleted, to be recomputed
        self.report = Report()  # names each bad entry (cache file, audio) and what was wrong
        self._keys: dict[str, str] = {}  # audio path -> content key (files are hashed once a process)

    @classmethod
    def for_encoder(cls, encoder, root: str | Path | None = None, dtype: torch.dtype = torch.float16):
        """A cache keyed by `encoder.settings()` plus `weights_fingerprint(encoder)`."""
        return cls({**encoder.settings(), "weights": weights_fingerprint(encoder)}, root=root, dtype=dtype)

    def key(self, audio: str | Path | torch.Tensor) -> str:
        """The content key; raises `AudioError` (naming the file) for a file `check_file` refuses."""
        if isinstance(audio, torch.Tensor):
            return content_key(audio)
        path = str(audio)
        if path not in self._keys:
            self._keys[path] = content_key(path)
        return self._keys[path]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def _read(self, key: str, name: str) -> torch.Tensor | None:
        """The verified float32 states of entry `key` (audio `name`), or None (absent, or bad: deleted + counted)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:  # read into memory (no mmap: a tensor must not change or fault when its file is rewritten)
            data = p.read_bytes()
            header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
            meta, states = header.get("__metadata__") or {}, safetensors_load(data)["states"]
            problem = self._problem(meta, states, key)
        except Exception as e:  # truncated / garbage files raise SafetensorError, OSError, ...
            problem = f"unreadable ({type(e).__name__}: {str(e)[:80]})"
        if problem is None:
            return states.float()
        self.bad += 1
        self.report.skip(str(p), f"bad cache entry for {name}: {problem}; recomputed")
        p.unlink(missing_ok=True)
        return None

    @staticmethod
    def _problem(meta: dict, states: torch.Tensor, key: str) -> str | None:
        """What is wrong with a loaded entry, or None."""
        if meta.get("format") != ENTRY_FORMAT:
            return f"entry format {meta.get('format')!r}, expected {ENTRY_FORMAT}"
        if meta.get("key") != key:
            return f"holds the states of another audio (key {str(meta.get('key'))[:12]}...)"
        if states.dim() != 2 or meta.get("shape") != ",".join(map(str, states.shape)):
            return f"shape {tuple(states.shape)} does not match the recorded {meta.get('shape')}"
        if meta.get("sha256") != _digest(states):
            return "checksum mismatch (corrupted bytes)"
        return None

    def get(self, audio: str | Path | torch.Tensor) -> torch.Tensor | None:
        """Cached ``(frames, dim)`` float32 states for `audio`, or None (counted as a miss)."""
        states = self._read(self.key(audio), str(audio) if not isinstance(audio, torch.Tensor) else "a waveform")
        if states is None:
            self.misses += 1
        else:
            self.hits += 1
        return states

    def put(self, audio: str | Path | torch.Tensor, states: torch.Tensor) -> Path:
        """Store ``(frames, dim)`` finite states for `audio` (atomic write, with key, shape and checksum)."""
        if states.dim() != 2:
            raise ValueError(f"expected (frames, dim) states, got shape {tuple(states.shape)}")
        name = str(audio) if not isinstance(audio, torch.Tensor) else "a waveform"
        if not torch.isfinite(states).all():
            raise ValueError(f"{name}: the encoder's states contain NaN or inf; not cached")
        key = self.key(audio)
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "settings.json").is_file():
            _atomic_write_text(self.dir / "settings.json", json.dumps(self.settings, indent=2, sort_keys=True))
        states = states.detach().to("cpu", self.dtype).contiguous()
        meta = {"format": ENTRY_FORMAT, "key": key, "shape": ",".join(map(str, states.shape)),
                "sha256": _digest(states)}
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        save_file({"states": states}, str(tmp), metadata=meta)
        tmp.replace(p)
        return p

    def __contains__(self, audio) -> bool:
        """Whether a verified entry exists (a bad one is deleted and counted); unreadable audio: False."""
        try:
            return self._read(self.key(audio), str(audio)) is not None
        except (AudioError, OSError):  # loading it will name the problem
            return False

    @torch.no_grad()
    def fill(self, utts: list[Utterance], encoder, batch_size: int = 8, report: Report | None = None,
             device: torch.device | str | None = None, progress: bool = True) -> list[Utterance]:
        """Encode every utterance without a verified entry (batched, longest first); return the usable
        ones in order. Bad audio (refused file, unreadable, too short / long, NaN) is skipped and
        named in `report`; every other row is kept, duplicates of an id included."""
        report = report if report is not None else Report()
        bad: set[int] = set()  # row positions, not ids: a bad row never takes a good one with it
        todo = []
        for i, u in enumerate(utts):
            try:
                if self._read(self.key(u.audio), u.audio) is None:
                    todo.append(i)
            except AudioError as e:
                report.skip(u.id, str(e))
                bad.add(i)
        todo.sort(key=lambda i: -utts[i].duration)
        device = device or next(encoder.parameters()).device
        encoder.eval()
        for start in tqdm(range(0, len(todo), batch_size), desc="encode+cache", disable=not progress or not todo):
            bad |= self._encode_batch(utts, todo[start: start + batch_size], encoder, device, report)
        good = [u for i, u in enumerate(utts) if i not in bad]
        report.kept += len(good)
        return good

    def _encode_batch(self, utts: list[Utterance], idx: list[int], encoder, device, report: Report) -> set[int]:
        """Encode and store rows `idx`; returns the positions that failed (skipped and named in `report`)."""
        batch, failed = [], set()
        for i in idx:
            u = utts[i]
            try:
                batch.append((i, encoder.featurize(load_audio(u.audio, max_seconds=encoder.max_seconds))))
            except (AudioError, ValueError) as e:
                report.skip(u.id, str(e) if u.audio in str(e) else f"{u.audio}: {e}")
                failed.add(i)
        if not batch:
            return failed
        inputs, lengths = encoder.collate([f for _, f in batch])
        states, out_lengths = encoder(inputs.to(device), lengths.to(device))
        for (i, _), s, n in zip(batch, states, out_lengths):
            try:
                self.put(utts[i].audio, s[: int(n)])
            except ValueError as e:
                report.skip(utts[i].id, str(e))
                failed.add(i)
        return failed

    def size_bytes(self) -> int:
        """Disk used by this cache folder."""
        return sum(p.stat().st_size for p in self.dir.rglob("*.safetensors")) if self.dir.is_dir() else 0


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
