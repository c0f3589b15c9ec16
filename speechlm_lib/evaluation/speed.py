"""Decoding speed against the tool a user would pick instead: faster-whisper (CTranslate2, int8).

Both systems decode the same utterances in the same process, batch for batch (`systems.System.decode`
times only the decoding, not the file reads), alternating, `repeats` times; each RTF is the median of its
repeats (this 2-core machine's timings wander by about 10 % run to run, so only a same-run ratio means much).

    out = compare_speed(utts, {"speech-LLM": speechlm_system, "faster-whisper": fw_system})
    out["rtf"]["speech-LLM"] / out["rtf"]["faster-whisper"]
"""
from __future__ import annotations

import statistics

from speechlm_lib.data.records import Utterance


def time_system(system, utts: list[Utterance]) -> dict:
    """One decoding pass: ``{"seconds", "audio_seconds", "rtf", "texts"}``."""
    out = system.decode(utts)
    audio = sum(u.duration for u in utts)
    return {"seconds": out.total_seconds, "audio_seconds": audio, "rtf": out.total_seconds / max(audio, 1e-9),
            "texts": out.texts}


def compare_speed(utts: list[Utterance], systems: dict, repeats: int = 3, warmup: int = 2) -> dict:
    """Median RTF of each system (a label -> `systems.System`) on the same utterances, decoded alternately.

    `warmup` utterances are decoded once by each first (first-call allocations, thread pools).
    Returns ``{"rtf": {label: median}, "runs": {label: [rtf, ...]}, "audio_seconds", "n", "texts"}``."""
    if not utts:
        raise ValueError("no utterances to time")
    for s in systems.values():
        s.decode(utts[:warmup])
    runs = {label: [] for label in systems}
    texts = {}
    for _ in range(repeats):
        for label, s in systems.items():
            t = time_system(s, utts)
            runs[label].append(t["rtf"])
            texts[label] = t["texts"]
    return {"rtf": {k: statistics.median(v) for k, v in runs.items()}, "runs": runs, "n": len(utts),
            "audio_seconds": sum(u.duration for u in utts), "texts": texts}


def against_faster_whisper(folder, utts: list[Utterance], repeats: int = 3, warmup: int = 2) -> dict:
    """`compare_speed` of the speech-LLM saved in `folder` and faster-whisper, each in a process of its own
    (`evaluation.isolated`: in one process faster-whisper's thread runtime slowed the speech-LLM 1.6 x), plus
    ``"ratio"`` (speech-LLM RTF / faster-whisper RTF). Raises `SystemUnavailable` when faster-whisper is not
    installed, before starting anything."""
    from importlib.util import find_spec

    from speechlm_lib.evaluation.isolated import Isolated
    from speechlm_lib.evaluation.systems import SystemUnavailable

    if find_spec("faster_whisper") is None:
        raise SystemUnavailable("faster-whisper is not installed (pip install -e '.[speed]')")
    with Isolated("speechlm", folder=folder) as ours, Isolated("faster_whisper") as theirs:
        out = compare_speed(utts, {"speech-LLM": ours, "faster-whisper": theirs}, repeats=repeats, warmup=warmup)
    return {**out, "ratio": speed_ratio(out, "speech-LLM", "faster-whisper")}


def speed_ratio(result: dict, ours: str, theirs: str) -> float:
    """RTF(ours) / RTF(theirs): below 1, ours is faster."""
    return result["rtf"][ours] / max(result["rtf"][theirs], 1e-12)
