"""The synthetic speech corpus: rare-entity sentences spoken by eSpeak NG voices.

``build_corpus(CorpusConfig.preset("cpu"))`` writes::

    data/synth/cpu/
      train.jsonl dev.jsonl test.jsonl            English ASR (+ German `translation`)
      train_de.jsonl dev_de.jsonl test_de.jsonl   German speech (`translation` = the English original)
      audio/<split>/<split>-000042.wav            16 kHz mono PCM16
      audio/<split>/_journal.jsonl                finished files (resuming checks them)
      corpus.json                                 the config and speaker plan of the finished build

Speakers are (voice, variant, pitch, rate) combinations; every split gets its
own voice+variant combinations, so dev/test voices are never heard in training.
Utterance ``i`` of a split (its text, speaker and noise) depends only on
``(seed, split, i)``, never on worker order. Files are written atomically and a
rerun re-synthesises only missing, unreadable or wrong-length files.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from speechlm_lib import config
from speechlm_lib.config import StageConfig
from speechlm_lib.data import textgen, tts
from speechlm_lib.data.records import Report, Utterance, read_manifest, write_manifest
from speechlm_lib.data.tts import Voice

SPLITS = ("train", "dev", "test")
ENGLISH_VOICES = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en")
SYNTH_VERSION = 3  # 3: whole-number resampling, identical on every CPU. Bump when synthesis changes: finished files from older versions are redone
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")


@dataclass
class CorpusConfig(StageConfig):
    """What to synthesise. ``preset(name)`` reads ``configs/corpus/<name>.yaml``: smoke (seconds),
    cpu (>= 10k train, minutes) or gpu (50k train, with noise)."""

    config_name: ClassVar[str] = "corpus"
    name: str = "cpu"  # preset name; the default output folder is data/synth/<name>
    sizes: tuple[int, int, int] = (10_000, 500, 500)  # English utterances in (train, dev, test)
    speakers: tuple[int, int, int] = (48, 8, 8)  # English speakers in (train, dev, test), disjoint voices
    german_share: float = 0.05  # German utterances per split as a fraction of its English size (0 = none)
    german_speakers: tuple[int, int, int] = (7, 3, 3)  # German speakers in (train, dev, test)
    english_voices: tuple[str, ...] = ENGLISH_VOICES  # eSpeak voices (accents) for English
    german_voices: tuple[str, ...] = ("de",)  # eSpeak voices for German
    variants: tuple[str, ...] = VARIANTS  # voice variants (timbres) combined with every voice
    pitch_range: tuple[int, int] = (30, 70)  # per-speaker base pitch drawn from this range (eSpeak 0-99)
    rate_range: tuple[int, int] = (140, 185)  # per-speaker speaking rate in words/min
    noise_snr_db: tuple[float | None, ...] | None = None  # SNR choices per utterance (a None entry: clean); None: clean
    heldout_entities: bool = True  # dev/test names come from a pool never used in train text
    max_seconds: float = 12.0  # longer utterances are skipped (and reported)
    seed: int = 0  # everything derives from (seed, split, index)
    workers: int | None = None  # synthesis processes; None = all cores, 1 = in this process


@dataclass
class BuildReport:
    """What a build did: files reused, synthesised, redone (with why) and failed."""

    reused: int = 0  # finished files from an earlier run, left untouched
    made: int = 0  # files synthesised in this run (including redone ones)
    redone: list[tuple[str, str]] = field(default_factory=list)  # (id, why the old file was not kept)
    failed: Report = field(default_factory=Report)  # utterances left out of the manifests
    seconds: float = 0.0  # wall-clock build time

    def __str__(self) -> str:
        lines = [f"reused {self.reused}, synthesised {self.made}, redone {len(self.redone)}, "
                 f"failed {len(self.failed.skipped)} in {self.seconds:.1f} s"]
        lines += [f"  redone {uid}: {why}" for uid, why in self.redone[:10]]
        lines += [f"  failed {uid}: {why}" for uid, why in self.failed.skipped[:10]]
        return "\n".join(lines)


def _interleaved_combos(voices: tuple[str, ...], variants: tuple[str, ...], rng: random.Random) -> list:
    """All (voice, variant) pairs, shuffled, ordered round-robin over voices so every prefix spans accents."""
    per_voice = []
    for v in rng.sample(list(voices), len(voices)):
        per_voice.append([(v, var) for var in rng.sample(list(variants), len(variants))])
    return [group[i] for i in range(len(variants)) for group in per_voice]


def _assign(combos: list, counts: tuple[int, int, int], cfg: CorpusConfig, rng: random.Random,
            language: str) -> dict[str, list[Voice]]:
    """Give test, then dev, then train their own voice+variant combinations, with random pitch and rate."""
    if sum(counts) > len(combos):
        raise ValueError(f"{sum(counts)} {language} speakers requested but only {len(combos)} "
                         f"voice+variant combinations exist")
    plan, start = {}, 0
    for split in ("test", "dev", "train"):
        n = counts[SPLITS.index(split)]
        plan[split] = [Voice(v, var, rng.randint(*cfg.pitch_range), rng.randint(*cfg.rate_range), language)
                       for v, var in combos[start:start + n]]
        start += n
    return {s: plan[s] for s in SPLITS}


def speaker_plan(cfg: CorpusConfig) -> dict[str, list[Voice]]:
    """Speakers per split: 'train', 'dev', 'test' (English) and 'train_de', 'dev_de', 'test_de'."""
    rng = random.Random(f"{cfg.seed}:speakers")
    plan = _assign(_interleaved_combos(cfg.english_voices, cfg.variants, rng), cfg.speakers, cfg, rng, "en")
    german = _assign(_interleaved_combos(cfg.german_voices, cfg.variants, rng), cfg.german_speakers, cfg, rng, "de")
    plan.update({f"{s}_de": german[s] for s in SPLITS})
    return plan


def split_sizes(cfg: CorpusConfig) -> dict[str, int]:
    """Utterances per split, English and German (German splits of size 0 are left out)."""
    sizes = dict(zip(SPLITS, cfg.sizes))
    for s, n in zip(SPLITS, cfg.sizes):
        if round(n * cfg.german_share) > 0:
            sizes[f"{s}_de"] = round(n * cfg.german_share)
    return sizes


@dataclass
class Job:
    """One utterance to synthesise (all of it derived from (seed, split, index))."""

    utt: Utterance  # the manifest record (audio = absolute path; duration filled after synthesis)
    voice: Voice  # who speaks it
    snr_db: float | None  # additive white noise at this SNR, or None for clean audio
    noise_seed: int  # seeds the noise of this utterance

    @property
    def key(self) -> str:
        """Fingerprint of everything that determines the audio (a config change invalidates old files)."""
        spec = f"{SYNTH_VERSION}|{self.utt.text}|{self.voice.id}|{self.snr_db}|{self.noise_seed}"
        return hashlib.sha1(spec.encode()).hexdigest()[:16]


def plan_split(cfg: CorpusConfig, split: str, out_dir: Path, plan: dict | None = None) -> list[Job]:
    """The jobs of one split (e.g. 'train' or 'dev_de'), in index order."""
    plan = plan or speaker_plan(cfg)
    base, german = split.removesuffix("_de"), split.endswith("_de")
    holdout = None if not cfg.heldout_entities else ("train" if base == "train" else "test")
    gen = textgen.SentenceGenerator(seed=f"{cfg.seed}:{split}", holdout=holdout)
    jobs = []
    for i in range(split_sizes(cfg)[split]):
        rng = random.Random(f"{cfg.seed}:{split}:{i}")
        s, voice = gen.sample(i), rng.choice(plan[split])
        snr = rng.choice(cfg.noise_snr_db) if cfg.noise_snr_db else None
        uid = f"{split}-{i:06d}"
        utt = Utterance(id=uid, audio=str(out_dir / "audio" / split / f"{uid}.wav"),
                        text=s.translation if german else s.text, speaker=voice.id,
                        language="de" if german else "en", keywords=s.keywords,
                        translation=s.text if german else s.translation)
        jobs.append(Job(utt, voice, snr, zlib.crc32(f"{cfg.seed}:{split}:{i}:noise".encode())))
    return jobs


def add_noise(wave: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Add white Gaussian noise at `snr_db` (relative to the mean power of `wave` ``(samples,)``).

    The sum is scaled down (never clipped) if it would exceed [-1, 1].
    """
    rng = np.random.default_rng(seed)
    noise_power = np.mean(wave.astype(np.float64) ** 2) / 10 ** (snr_db / 10)
    noisy = wave + rng.standard_normal(len(wave)).astype(np.float32) * np.float32(np.sqrt(noise_power))
    peak = float(np.abs(noisy).max())
    return noisy / peak * 0.99 if peak > 0.99 else noisy


def render(job: Job) -> np.ndarray:
    """The waveform of one job: float32 ``(samples,)`` at 16 kHz."""
    wave = tts.synthesize(job.utt.text, job.voice)
    return add_noise(wave, job.snr_db, job.noise_seed) if job.snr_db is not None else wave


def _synth_worker(args: tuple[Job, float]) -> tuple[str, int, str | None]:
    """Synthesise and atomically write one file; returns (id, samples, error or None)."""
    job, max_seconds = args
    try:
        wave = render(job)
        if len(wave) > max_seconds * tts.OUTPUT_RATE:
            return job.utt.id, len(wave), f"{len(wave) / tts.OUTPUT_RATE:.1f} s is over max_seconds {max_seconds}"
        path = Path(job.utt.audio)
        tmp = path.with_name(f".{path.name}.tmp")
        sf.write(tmp, wave, tts.OUTPUT_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
        return job.utt.id, len(wave), None
    except Exception as e:  # report, never stop the whole build
        return job.utt.id, 0, f"{type(e).__name__}: {e}"


def check_file(path: Path, samples: int) -> str | None:
    """Why a finished file cannot be kept (missing, unreadable, wrong length), or None if it is fine."""
    if not path.is_file():
        return "missing"
    try:
        info = sf.info(str(path))
    except Exception as e:
        return f"unreadable ({type(e).__name__})"
    header = path.stat().st_size - 2 * info.frames
    if info.frames != samples or info.samplerate != tts.OUTPUT_RATE or not 0 < header < 1024:
        return f"wrong length ({info.frames} frames, {path.stat().st_size} bytes; expected {samples} frames)"
    return None


def _read_journal(path: Path) -> dict[str, dict]:
    """{id: {"key", "samples"}} of files recorded as finished (later lines win; bad lines ignored)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (ValueError, KeyError, TypeError):
                continue
    return done


def _pending(jobs: list[Job], journal: dict, report: BuildReport) -> tuple[list[Job], dict[str, int]]:
    """Split jobs into those to (re)synthesise and finished ones {id: samples}."""
    todo, finished = [], {}
    for job in jobs:
        row = journal.get(job.utt.id)
        if row is None or row.get("key") != job.key:
            if Path(job.utt.audio).exists():
                report.redone.append((job.utt.id, "made with another text, voice, noise or synth version"))
            todo.append(job)
            continue
        why = check_file(Path(job.utt.audio), row["samples"])
        if why is None:
            finished[job.utt.id] = row["samples"]
        else:
            report.redone.append((job.utt.id, why))
            todo.append(job)
    report.reused += len(finished)
    return todo, finished


def _pool(workers: int):
    """A 'spawn' pool whose workers run single-threaded BLAS (one eSpeak engine each)."""
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    try:
        return mp.get_context("spawn").Pool(workers)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_split(jobs: list[Job], split: str, cfg: CorpusConfig, pool, report: BuildReport) -> list[Utterance]:
    """Synthesise what is missing in one split; returns the split's finished utterances in index order."""
    if not jobs:
        return []
    journal_path = Path(jobs[0].utt.audio).parent / "_journal.jsonl"
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    todo, samples = _pending(jobs, _read_journal(journal_path), report)
    todo.sort(key=lambda j: j.voice.id)  # fewer voice switches; results do not depend on order
    keys = {j.utt.id: j.key for j in todo}
    args = [(j, cfg.max_seconds) for j in todo]
    results = pool.imap_unordered(_synth_worker, args, chunksize=16) if pool else map(_synth_worker, args)
    with open(journal_path, "a") as journal:
        for uid, n, err in tqdm(results, total=len(todo), desc=f"synth {split}", disable=not todo):
            if err:
                report.failed.skip(uid, err)
                continue
            journal.write(json.dumps({"id": uid, "key": keys[uid], "samples": n}) + "\n")
            samples[uid] = n
            report.made += 1
    utts = []
    for job in jobs:
        if job.utt.id in samples:
            job.utt.duration = round(samples[job.utt.id] / tts.OUTPUT_RATE, 3)
            utts.append(job.utt)
    report.failed.kept += len(utts)
    return utts


def default_dir(name: str) -> Path:
    """``<data_dir>/synth/<name>``."""
    return config.data_dir() / "synth" / name


def build_corpus(cfg: CorpusConfig, out_dir: str | Path | None = None,
                 report: BuildReport | None = None) -> dict[str, Path]:
    """Synthesise (or finish) the corpus; returns {split: manifest path}, e.g. 'train', 'dev_de'.

    `report` (optional) is filled with what was reused, synthesised, redone and failed.
    """
    out = Path(out_dir) if out_dir is not None else default_dir(cfg.name)
    report = report if report is not None else BuildReport()
    start, plan = time.time(), speaker_plan(cfg)
    workers = cfg.workers or os.cpu_count() or 1
    pool = _pool(workers) if workers > 1 else None
    manifests = {}
    try:
        for split in split_sizes(cfg):
            utts = _run_split(plan_split(cfg, split, out, plan), split, cfg, pool, report)
            manifests[split] = write_manifest(out / f"{split}.jsonl", utts, relative_to=out)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    report.seconds = time.time() - start
    _write_stamp(out, cfg, plan, manifests, report)
    print(f"corpus {cfg.name} -> {out}\n{report}")
    return manifests


def _write_stamp(out: Path, cfg: CorpusConfig, plan: dict, manifests: dict, report: BuildReport) -> None:
    """``corpus.json``: what was built (`ensure_corpus` compares it with the wanted config)."""
    stamp = {"config": asdict(cfg), "synth_version": SYNTH_VERSION, "textgen_version": textgen.VERSION,
             "manifests": {k: p.name for k, p in manifests.items()},
             "speakers": {k: [v.id for v in vs] for k, vs in plan.items()},
             "build_seconds": round(report.seconds, 1), "failed": len(report.failed.skipped)}
    (out / "corpus.json").write_text(json.dumps(stamp, indent=1))


def ensure_corpus(profile_name: str | None = None, out_dir: str | Path | None = None) -> dict[str, Path]:
    """The profile's corpus manifests, building (or finishing) it only when it is missing or incomplete."""
    cfg = CorpusConfig.preset(profile_name or config.profile())
    out = Path(out_dir) if out_dir is not None else default_dir(cfg.name)
    stamp_path = out / "corpus.json"
    if stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text())
        wanted = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k != "workers"}
        built = {k: v for k, v in stamp.get("config", {}).items() if k != "workers"}
        versions = (stamp.get("synth_version"), stamp.get("textgen_version")) == (SYNTH_VERSION, textgen.VERSION)
        same = built == wanted and versions and not stamp.get("failed")
        manifests = {k: out / name for k, name in stamp.get("manifests", {}).items()}
        if same and manifests and all(_complete(p) for p in manifests.values()):
            return manifests
    return build_corpus(cfg, out)


def build_info(corpus_dir: str | Path) -> dict:
    """The stamp of a finished build (``corpus.json``): config, speakers, manifests, build seconds."""
    path = Path(corpus_dir) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no finished corpus build here")
    return json.loads(path.read_text())


def _complete(manifest: Path) -> bool:
    """Whether the manifest exists and every audio file it lists exists."""
    try:
        return all(Path(u.audio).is_file() for u in read_manifest(manifest))
    except FileNotFoundError:
        return False


def corpus_stats(manifest: str | Path) -> dict:
    """Counts for plots and tables: utterances, hours, speakers, accents, durations, keyword counts."""
    utts = read_manifest(manifest)
    durations = [u.duration for u in utts]
    return {
        "utterances": len(utts),
        "hours": sum(durations) / 3600,
        "speakers": len({u.speaker for u in utts}),
        "accents": sorted({u.speaker.split("+")[0].split("_")[0] for u in utts}),
        "durations": durations,
        "per_speaker": Counter(u.speaker for u in utts),
        "keywords": Counter(k for u in utts for k in u.keywords),
        "languages": Counter(u.language for u in utts),
    }
