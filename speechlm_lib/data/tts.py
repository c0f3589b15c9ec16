"""eSpeak NG speech synthesis in-process, through ctypes.

The ``espeakng-loader`` wheel ships ``libespeak-ng.so`` and ``espeak-ng-data``;
we only use it to *locate* those two files (never to import its helpers), then
drive the C library directly:

    espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS)   # no audio device; samples come to a callback
    espeak_SetSynthCallback(collect)              # int16 chunks at 22050 Hz
    espeak_SetVoiceByName("gmw/en-gb-x-rp+m5")    # voice file + variant
    espeak_SetParameter(RATE / PITCH)             # words per minute, 0-99
    espeak_Synth(text) ; espeak_Synchronize()

The 22050 Hz int16 output is resampled to 16 kHz float32 with a small
windowed-sinc polyphase filter (numpy only, so workers need no torch) in
whole-number arithmetic, so the result is the same on every CPU (`resample`).

eSpeak keeps global state, so there is one engine per process (created lazily,
recreated after a fork) and a lock serialises threads within a process.
Parallel corpora use one worker *process* per core. Synthesis is exactly
repeatable: each call starts from a freshly loaded library (see `_Engine`);
`_fast_data_home` keeps that cheap (about 3 ms a call).
"""
from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import importlib.util
import os
import shutil
import threading
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np

from speechlm_lib.config import cache_dir

OUTPUT_RATE = 16_000  # Hz, equal to speechlm_lib.data.audio.SAMPLE_RATE (not imported: that pulls in torch)
ESPEAK_RATE = 22_050  # Hz, eSpeak NG's native output rate

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK = 0


@dataclass
class Voice:
    """One synthetic speaker: an eSpeak voice file, an optional variant, pitch and rate."""

    name: str = "en"  # eSpeak voice file name, lower case: 'en', 'en-us', 'en-gb-x-rp', 'de', ...
    variant: str | None = None  # voice variant from espeak-ng-data/voices/!v ('m5', 'f2', ...) or None
    pitch: int = 50  # base pitch, 0-99 (eSpeak's default 50)
    rate: int = 175  # speaking rate in words per minute (eSpeak's default 175)
    language: str | None = None  # language of the text it speaks ('en', 'de'); None: from `name`

    def __post_init__(self):
        self.name = self.name.lower()
        if self.language is None:
            self.language = self.name.split("-")[0]

    @property
    def id(self) -> str:
        """Stable speaker id, e.g. ``'en-gb-x-rp+m5_p55_r165'``."""
        variant = f"+{self.variant}" if self.variant else ""
        return f"{self.name}{variant}_p{self.pitch}_r{self.rate}"

    @classmethod
    def parse(cls, spec: str) -> "Voice":
        """A voice from ``'name'`` or ``'name+variant'`` with default pitch and rate."""
        name, _, variant = spec.partition("+")
        return cls(name=name, variant=variant or None)


def espeak_paths() -> tuple[Path, Path]:
    """(``libespeak-ng.so``, ``espeak-ng-data`` folder) inside the installed espeakng-loader wheel."""
    spec = importlib.util.find_spec("espeakng_loader")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'espeakng-loader' package is not installed (pip install espeakng-loader)")
    root = Path(list(spec.submodule_search_locations)[0])
    libs = sorted(root.glob("libespeak-ng*.so*")) + sorted(root.glob("libespeak-ng*.dylib")) \
        + sorted(root.glob("espeak-ng*.dll"))
    data = root / "espeak-ng-data"
    if not libs or not data.is_dir():
        raise RuntimeError(f"{root}: no libespeak-ng library or espeak-ng-data folder found")
    return libs[0], data


def _fast_data_home(data: Path) -> Path:
    """A folder holding an ``espeak-ng-data`` that links to `data`, plus lower-case voice aliases.

    eSpeak lower-cases voice names before looking for the file, so ``gmw/en-US``
    is only found after scanning every voice file (~5 ms, on every fresh load).
    With an alias ``lang/gmw/en-us`` it is opened directly. Built once in the
    cache folder; falls back to the wheel's folder where links cannot be made.
    """
    key = hashlib.sha1(str(data).encode()).hexdigest()[:10]
    home = cache_dir() / f"espeak-{key}"
    if (home / "espeak-ng-data").is_dir():
        return home
    tmp = home.with_name(f"{home.name}.tmp{os.getpid()}")
    try:
        out = tmp / "espeak-ng-data"
        out.mkdir(parents=True)
        for entry in data.iterdir():
            if entry.name != "lang":
                (out / entry.name).symlink_to(entry)
        for group in (data / "lang").iterdir():
            target = out / "lang" / group.name
            if group.is_file():
                target.parent.mkdir(exist_ok=True)
                target.symlink_to(group)
                continue
            target.mkdir(parents=True)
            for f in group.iterdir():
                (target / f.name).symlink_to(f)
                if f.name.lower() != f.name:
                    (target / f.name.lower()).symlink_to(f)
        tmp.rename(home)
    except OSError:  # no symlinks here, or another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return home if (home / "espeak-ng-data").is_dir() else data.parent


class _EspeakVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    """The process's eSpeak NG driver: collects samples from the synth callback.

    eSpeak keeps hidden state between calls (its pitch-flutter phase, gain
    control, breath-noise generator), so the same text would come out a few
    samples different each time. To make synthesis exactly repeatable, every
    call loads a fresh copy of the library, initialises it, speaks, and
    unloads it again (about 3 ms), with libc's ``rand`` reseeded.
    """

    def __init__(self):
        self.lib_path, self.data_path = espeak_paths()
        self.home = _fast_data_home(self.data_path)
        self.chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: the C side holds the pointer
        self._libc = ctypes.CDLL(None)
        lib = self._open()
        try:
            self.voices, self.files = self._list_voices(lib)
        finally:
            self._close(lib)

    def _open(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(str(self.lib_path))
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.home).encode(), 0)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"{self.lib_path}: espeak_Initialize failed or returned rate {rate}")
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    @staticmethod
    def _close(lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
        if unload is not None:
            unload(lib._handle)

    def _collect(self, wav, n, events) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    @staticmethod
    def _list_voices(lib: ctypes.CDLL) -> tuple[dict[str, list[str]], dict[str, str]]:
        """{name: [languages]} and {name: voice file, e.g. 'gmw/en-us'} of every installed voice.

        A voice's name is its file name in lower case ('en-us').
        """
        out, files, arr, i = {}, {}, lib.espeak_ListVoices(None), 0
        while arr[i]:
            v = arr[i].contents
            ident = v.identifier.decode().split("/")[-1].lower()
            files[ident] = v.identifier.decode().lower()
            langs, ptr = [], v.languages  # entries: <priority byte><name>\0 ..., then a 0 byte
            while ctypes.string_at(ptr, 1) != b"\0":
                name = ctypes.string_at(ptr + 1)
                langs.append(name.decode("utf-8", "replace"))
                ptr += len(name) + 2
            out[ident] = langs
            i += 1
        return out, files

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """int16 samples ``(samples,)`` at 22050 Hz; the same input always gives the same samples."""
        fast = self.home != self.data_path.parent  # lower-case aliases exist: load the file directly
        spec = (self.files[voice.name] if fast else voice.name) + (f"+{voice.variant}" if voice.variant else "")
        lib = self._open()
        try:
            if lib.espeak_SetVoiceByName(spec.encode()) != _EE_OK:
                raise ValueError(f"eSpeak NG could not load voice {spec!r}")
            lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate), 0)
            lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
            self._libc.srand(1)  # breath noise uses libc rand(), klatt voices espeak's own generator
            lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
            data = text.encode("utf-8") + b"\0"
            self.chunks = []
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
        finally:
            self._close(lib)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed (error {err}) for text {text[:60]!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def phonemes(self, text: str, voice: str) -> str:
        """eSpeak's phoneme mnemonics for `text` as `voice` would say it (``espeak_TextToPhonemes``, clause by
        clause), e.g. ``"m'aTju:z"`` for "Matthews" in English."""
        lib = self._open()
        try:
            lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            if lib.espeak_SetVoiceByName(self.files.get(voice, voice).encode()) != _EE_OK:
                raise ValueError(f"eSpeak NG could not load voice {voice!r}")
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            ptr, out = ctypes.c_void_p(ctypes.addressof(buf)), []
            while ptr.value:  # eSpeak advances the pointer one clause a call; NULL at the end
                out.append((lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, 0) or b"").decode())
        finally:
            self._close(lib)
        return " ".join(p.strip() for p in out if p.strip())


_engine: _Engine | None = None
_engine_pid: int | None = None
_lock = threading.Lock()


def _get_engine() -> _Engine:
    """The one engine of this process (a forked child builds its own)."""
    global _engine, _engine_pid, _lock
    if _engine is None or _engine_pid != os.getpid():
        if _engine_pid is not None and _engine_pid != os.getpid():
            _lock = threading.Lock()  # a lock copied mid-use by fork is never released
        _engine, _engine_pid = _Engine(), os.getpid()
    return _engine


@lru_cache(maxsize=65536)
def phonemes(text: str, voice: str = "en-us") -> str:
    """How eSpeak NG would pronounce `text`, as its phoneme mnemonics (cached): a spelling-independent key for
    "sounds like" comparisons (`decoding.list_filter`). Empty text gives ""."""
    if not text.strip():
        return ""
    with _lock:
        return _get_engine().phonemes(text, voice)


def list_voices(language: str | None = "en") -> list[str]:
    """Names of installed voices speaking `language` ('en', 'de', ...; None: all), sorted."""
    voices = _get_engine().voices
    if language is None:
        return sorted(voices)
    lang = language.lower()
    return sorted(n for n, langs in voices.items() if any(x == lang or x.startswith(lang + "-") for x in langs))


@lru_cache(maxsize=1)
def _variants() -> tuple[str, ...]:
    folder = espeak_paths()[1] / "voices" / "!v"
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))


def list_variants() -> list[str]:
    """Names of the voice variants in ``espeak-ng-data/voices/!v`` (e.g. 'm1'..'m8', 'f1'..'f5'), sorted."""
    return list(_variants())


def check_voice(voice: Voice) -> None:
    """Raise ValueError naming the voice/variant/parameter that is not valid."""
    if voice.name not in _get_engine().voices:
        raise ValueError(f"unknown eSpeak voice {voice.name!r}; installed English voices: {list_voices('en')}")
    if voice.variant is not None and voice.variant not in _variants():
        raise ValueError(f"unknown eSpeak voice variant {voice.variant!r} (see tts.list_variants())")
    if not 0 <= voice.pitch <= 99:
        raise ValueError(f"voice {voice.id}: pitch {voice.pitch} is outside 0-99")
    if not 80 <= voice.rate <= 450:
        raise ValueError(f"voice {voice.id}: rate {voice.rate} words/min is outside 80-450")


def synthesize(text: str, voice: Voice | str = "en") -> np.ndarray:
    """Speak `text` with `voice` (a `Voice` or ``'name[+variant]'``).

    Returns float32 samples ``(samples,)`` in [-1, 1] at 16 kHz (`OUTPUT_RATE`).
    Raises ValueError for empty text or an unknown voice/variant (naming it).
    """
    if not text or not text.strip():
        raise ValueError("synthesize: empty text")
    voice = Voice.parse(voice) if isinstance(voice, str) else voice
    with _lock:
        check_voice(voice)
        pcm = _get_engine().synth(text, voice)
    if pcm.size == 0:
        raise RuntimeError(f"eSpeak NG produced no audio for {text[:60]!r} with voice {voice.id}")
    wave = resample(pcm, ESPEAK_RATE, OUTPUT_RATE)
    return np.clip(wave, -1.0, 1.0)


TAP_BITS = 15  # filter taps are integers in units of 2**-15 (see `resample`)


@lru_cache(maxsize=4)
def _block_filter(up: int, down: int, half_taps: int) -> np.ndarray:
    """Windowed-sinc low-pass as a block matrix ``(up, down + 2 * half_taps)`` of integer taps.

    Output sample ``p`` of a block of `up` outputs sits at input position
    ``p * down / up``; its row holds the filter taps over that block's inputs,
    scaled by ``2**TAP_BITS`` and rounded (float64 holding whole numbers).
    """
    cutoff = 0.95 * min(1.0, up / down)  # fraction of the input Nyquist frequency
    k = np.arange(-half_taps + 1, half_taps + 1)  # taps at input offsets relative to floor(position)
    window = np.kaiser(2 * half_taps, 8.0)
    w = np.zeros((up, down + 2 * half_taps), np.float64)
    for p in range(up):
        base, frac = divmod(p * down, up)
        h = cutoff * np.sinc(cutoff * (k - frac / up)) * window
        w[p, base:base + 2 * half_taps] = np.round(h / h.sum() * 2 ** TAP_BITS)
    return w


def resample(x: np.ndarray, sr_in: int, sr_out: int, half_taps: int = 16) -> np.ndarray:
    """Band-limited resampling of 16-bit audio ``(samples,)`` from `sr_in` to `sr_out` Hz.

    `x` holds int16 samples or floats on the 16-bit grid (``k / 32768``); the result is float32 on
    that grid too. Polyphase filtering as one matrix product: the input is cut into overlapping
    blocks of `down` samples, ``(blocks, down + 2h)``, and each block yields `up` outputs through
    `_block_filter` ``(up, down + 2h)``.

    Exact on every CPU: samples and taps are whole numbers, so every partial sum of the float64
    product is a whole number below 2**53 and no summation order (BLAS threads, SIMD width) can
    change it. The corpus is therefore bit-identical for any worker count and processor.
    """
    x = np.asarray(x)
    pcm = x.astype(np.float64) if x.dtype.kind in "iu" else np.round(x.astype(np.float64) * 32768.0)
    if sr_in == sr_out:
        return (pcm / 32768.0).astype(np.float32)
    g = gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    n_out = len(pcm) * up // down
    blocks = -(-n_out // up)
    padded = np.zeros(blocks * down + 2 * half_taps, np.float64)
    padded[half_taps - 1:half_taps - 1 + len(pcm)] = pcm
    frames = np.lib.stride_tricks.sliding_window_view(padded, down + 2 * half_taps)[::down][:blocks]
    out = frames @ _block_filter(up, down, half_taps).T  # (blocks, up), whole numbers in units of 2**-15
    out = np.round(out.reshape(-1)[:n_out] / 2 ** TAP_BITS) / 32768.0
    return out.reshape(-1)[:n_out].astype(np.float32)
