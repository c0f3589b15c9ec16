"""``speechlm transcribe``: audio files and folders -> transcripts, with any saved model.

Folders are searched recursively for files whose extension soundfile reads (wav, flac, mp3, ogg,
...); a file named on the command line is always tried. Long recordings are cut into pieces
(`decoding.chunking`: at most ``--chunk-seconds``, cuts at the quietest point, no overlap). A file
that cannot be read is named, skipped and counted; the rest are transcribed. Output: JSONL
(``{"id", "audio", "text", "seconds", "chunks"}`` a line) or plain text (one transcript a line, in
input order), to ``--out`` or stdout. ``--keywords`` puts a list in the prompt (stage 4); ``--snap`` then
replaces written words that nearly match an entry by that entry, except words the model heard in training;
``--place`` then writes an entry the answer still lacks where the ``ctc`` projector's posteriors hold it, and
moves one the answer wrote on words heard elsewhere (`decoding.list_place`; each piece of audio on its own).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from speechlm_lib.cli.common import (CLIError, add_config_args, load_config, load_model, model_folder, run_folder,
                                     summary)
from speechlm_lib.data.audio import SAMPLE_RATE, AudioError, load_audio
from speechlm_lib.data.records import Report
from speechlm_lib.decoding.chunking import split_long

FILES_PER_GROUP = 32  # files loaded and decoded together (bounds memory on a large folder)


def audio_extensions() -> set[str]:
    """Lower-case extensions of the formats this soundfile (libsndfile) reads, plus common aliases."""
    formats = {f.lower() for f in sf.available_formats()}
    exts = {f".{f}" for f in formats}
    for fmt, more in {"ogg": {".oga", ".opus"}, "aiff": {".aif"}, "wav": {".wave"}}.items():
        if fmt in formats:
            exts |= more
    return exts


def find_audio(paths: list[str], report: Report) -> list[tuple[str, Path]]:
    """``[(id, file)]``: files as given (id = file name), folders searched (id = the path inside it).
    A path that does not exist is named and skipped."""
    exts, out = audio_extensions(), []
    for p in map(Path, paths):
        if p.is_dir():
            out += [(str(f.relative_to(p).with_suffix("")), f) for f in sorted(p.rglob("*"))
                    if f.is_file() and f.suffix.lower() in exts]
        elif p.is_file():
            out.append((p.stem, p))
        else:
            report.skip(str(p), "no such file or folder")
    return out


def keyword_instruction(instruction: str, keywords: list[str]) -> str:
    """The instruction with keyword context in front, in the line stage 4 trains with (`models.context`:
    "Names that may occur: A, B. <instruction>"); the instruction alone for no keywords."""
    from speechlm_lib.models.context import with_context

    return with_context(instruction, keywords)


@dataclass
class Done:
    """One transcribed file."""

    id: str
    audio: str
    text: str
    seconds: float
    chunks: int


def transcribe_files(model, files: list[tuple[str, Path]], decode, instruction: str | None,
                     chunk_seconds: float, report: Report, rescore=None, fix=None) -> list[Done]:
    """Transcribe `files` in groups (progress bar over files); unreadable ones go to `report`. With `rescore`
    (a `RescoreConfig`) the projector's n-best is rescored by the LLM instead of decoding greedily. `fix`:
    ``fix(texts, waves) -> texts``, applied to each group's pieces before a file's pieces are joined."""

    limit = min(chunk_seconds, model.encoder.max_seconds or chunk_seconds)
    done = []
    bar = tqdm(total=len(files), desc="transcribe", unit="file")
    for g in range(0, len(files), FILES_PER_GROUP):
        loaded, items = [], []
        for uid, path in files[g: g + FILES_PER_GROUP]:
            try:
                wave = load_audio(path)
            except AudioError as e:
                report.skip(str(path), str(e).removeprefix(f"{path}: "))
                continue
            pieces = split_long(wave, limit)
            loaded.append((uid, path, wave.shape[-1] / SAMPLE_RATE, len(pieces)))
            items += [(f"{path}#{k}", piece) for k, (_, piece) in enumerate(pieces)]
        texts = _decode(model, items, decode, instruction, rescore) if items else []
        if fix is not None and items:
            texts = fix(texts, [w for _, w in items])
        k = 0
        for uid, path, seconds, n in loaded:
            text = " ".join(t.strip() for t in texts[k: k + n] if t.strip())
            done.append(Done(uid, str(path), text, round(seconds, 3), n))
            k += n
        bar.update(min(FILES_PER_GROUP, len(files) - g))
    bar.close()
    report.kept += len(done)
    return done


def _decode(model, items: list, decode, instruction: str | None, rescore) -> list[str]:
    """Texts of ``(name, wave)`` items: greedy decoding, or the n-best rescored in batches of ``decode.batch_size``."""
    from speechlm_lib.decoding.ctc_rescore import rescore_waves
    from speechlm_lib.decoding.generation import transcribe

    if rescore is None:
        return transcribe(model, items, decode, instruction=instruction, progress=False).texts
    waves = [w for _, w in items]
    return [t for b in range(0, len(waves), decode.batch_size)
            for t in rescore_waves(model, waves[b: b + decode.batch_size], rescore, instruction)]


def _rescore_config(args, model):
    """The `RescoreConfig` of ``--rescore`` (None without it); ``--lm-examples``: a text file whose lines the LLM
    reads before each candidate. A model without the ``ctc`` projector, or keywords, are an error."""
    if not args.rescore:
        return None
    from speechlm_lib.decoding.ctc_rescore import RescoreConfig

    if not hasattr(model.projector, "logits"):
        raise CLIError(f"--rescore needs a model with the 'ctc' projector; {args.checkpoint} has "
                       f"{type(model.projector).__name__}")
    if args.keywords.strip():
        raise CLIError("--rescore does not use --keywords (the list is a prompt for greedy decoding): give one")
    examples = []
    if args.lm_examples:
        path = Path(args.lm_examples)
        if not path.is_file():
            raise CLIError(f"{path}: no such file (--lm-examples: example transcripts, one a line)")
        examples = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return RescoreConfig(examples=examples)


def _place(args, model):
    """The `ListPlaceConfig` of ``--place`` (None without it): a similarity per list entry (the threshold is it
    times the list's length), for a model with the ``ctc`` projector, with ``--keywords``."""
    if not args.place:
        return None
    from speechlm_lib.decoding.list_place import ListPlaceConfig

    if not 0.0 < args.place <= 1.0:
        raise CLIError(f"--place is a similarity per list entry in (0, 1], got {args.place}")
    if not args.keywords.strip():
        raise CLIError("--place needs --keywords: the list whose entries are placed")
    if not hasattr(model.projector, "logits"):
        raise CLIError(f"--place needs a model with the 'ctc' projector (its posteriors are spotted); "
                       f"{args.checkpoint} has {type(model.projector).__name__}")
    return ListPlaceConfig(min_similarity=args.place)


def _fixer(model, keywords: list[str], snap, place, known, batch_size: int, counts: dict):
    """The `transcribe_files` `fix` of ``--snap`` and ``--place`` (None with neither): snap each piece's text to
    `keywords`, then place the entries it lacks (`known`: the training words); `counts` gathers ``snapped`` and
    ``placed``."""
    if snap is None and place is None:
        return None
    from speechlm_lib.decoding.list_filter import spotted_waves
    from speechlm_lib.decoding.list_place import place_all

    def fix(texts: list[str], waves: list) -> list[str]:
        texts, n = _snapped(texts, keywords, snap)
        counts["snapped"] = counts.get("snapped", 0) + n
        if place is not None:
            texts, n = place_all(texts, [keywords] * len(texts), spotted_waves(model, waves, batch_size), place, known)
            counts["placed"] = counts.get("placed", 0) + n
        return texts

    return fix


def _snap(args, checkpoint):
    """``(ListSnapConfig, training words)`` of ``--snap`` (None without it). The words come from
    ``--known-words`` or the checkpoint's ``training_words.txt``; without either, every word may snap (said)."""
    if not args.snap:
        return None
    from speechlm_lib.decoding.list_snap import ListSnapConfig

    if not 0.0 < args.snap <= 1.0:
        raise CLIError(f"--snap is a similarity in (0, 1], got {args.snap}")
    if not args.keywords.strip():
        raise CLIError("--snap needs --keywords: the list the transcripts snap to")
    return ListSnapConfig(min_score=args.snap), _known_words(args, checkpoint, "--snap")


def _known_words(args, checkpoint, option: str) -> set[str] | None:
    """The words heard in training, which snapping never replaces and placing keeps at a span's edge: from
    ``--known-words``, else the checkpoint's ``training_words.txt``; None (said) without either."""
    from speechlm_lib.decoding.list_snap import load_training_words

    if args.known_words and not Path(args.known_words).is_file():
        raise CLIError(f"{args.known_words}: no such file (--known-words: the training transcripts or words)")
    folder = model_folder(checkpoint)
    known = load_training_words(args.known_words or folder)
    if known is None:
        summary(f"{option}: {folder} has no training_words.txt and no --known-words was given: any word may be "
                f"replaced by a list entry, words the model heard in training too")
    return known


def _snapped(texts: list[str], keywords: list[str], snap) -> tuple[list[str], int]:
    """`texts` snapped to `keywords` (`decoding.list_snap`), and how many words were replaced."""
    from speechlm_lib.decoding.list_snap import snap_all

    if snap is None:
        return texts, 0
    return snap_all(texts, [keywords] * len(texts), snap[0], snap[1])


WRITERS = {
    "jsonl": lambda d: json.dumps({"id": d.id, "audio": d.audio, "text": d.text, "seconds": d.seconds,
                                   "chunks": d.chunks}, ensure_ascii=False),
    "text": lambda d: d.text,
}


def add_parser(sub) -> None:
    from speechlm_lib.recipes.stage2_align import Stage2Config

    p = sub.add_parser("transcribe", help="transcribe audio files or folders with a saved model",
                       description=__doc__, formatter_class=_raw())
    p.add_argument("inputs", nargs="+", metavar="AUDIO", help="audio files and/or folders")
    p.add_argument("--checkpoint", required=True,
                   help="a run folder (speechlm train), its model/ folder, an export folder or a hub repo id")
    p.add_argument("--out", help="output file (default: stdout)")
    p.add_argument("--format", choices=sorted(WRITERS), help="jsonl or text (default: from --out's suffix, else jsonl)")
    p.add_argument("--batch-size", type=int, help="clips decoded together (default: the config's decode.batch_size)")
    p.add_argument("--keywords", default="",
                   help="comma-separated words to bias towards (a line in front of the instruction, as stage 4 trains)")
    p.add_argument("--snap", type=float, default=0.0, metavar="MIN_SCORE",
                   help="with --keywords: a written word at least this similar (0-1) to a list entry becomes that "
                        "entry (decoding.list_snap; the stage-4 benchmark chose 0.3 on dev); 0 = off")
    p.add_argument("--place", type=float, default=0.0, metavar="MIN_SIMILARITY",
                   help="with --keywords: after snapping, write a list entry the answer lacks where the 'ctc' "
                        "projector heard it, if the keyword spotter's similarity reaches this times the list's length "
                        "(decoding/list_place.py; notebook 04 chose 0.0001 on dev)")
    p.add_argument("--known-words", help="with --snap or --place: a text file of the training transcripts (or words); words "
                                         "in it are never replaced (default: the checkpoint's training_words.txt)")
    p.add_argument("--instruction", help="the task instruction (default: the model's own)")
    p.add_argument("--rescore", action="store_true",
                   help="let the LLM choose among the ctc projector's 16 best transcripts (decoding.ctc_rescore; "
                        "the weights chosen on speechocean762's dev speakers) instead of greedy decoding")
    p.add_argument("--lm-examples", help="with --rescore: a text file of example transcripts, one a line, that "
                                         "the LLM reads before each candidate (e.g. five of your training texts)")
    p.add_argument("--chunk-seconds", type=float, default=25.0,
                   help="longer audio is cut into pieces of at most this (and at most the encoder's limit)")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="the LLM's dtype: auto (the faster one on this machine: a model trained in bfloat16 "
                        "decodes in float32 on a CPU where bf16 is slower), float32, bfloat16 (default: as saved)")
    add_config_args(p, Stage2Config)
    p.set_defaults(func=run)


def _raw():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def run(args, argv: list[str]) -> int:
    from speechlm_lib.recipes.stage2_align import Stage2Config

    start, report = time.perf_counter(), Report()
    files = find_audio(args.inputs, report)
    if not files:
        raise CLIError(f"no audio files in {', '.join(args.inputs)} ({report.skipped or 'no readable extensions'})")
    run_dir = run_folder(args.checkpoint)
    cfg = load_config(Stage2Config, args, default=run_dir / "config.yaml" if run_dir else None)
    decode = cfg.decode if args.batch_size is None else _with_batch(cfg.decode, args.batch_size)
    model = load_model(args.checkpoint, args.dtype)
    keywords = [k.strip() for k in args.keywords.split(",") if k.strip()]
    instruction = keyword_instruction(args.instruction or model.prompts.config.instruction, keywords)
    rescore = _rescore_config(args, model)
    snap, place, counts = _snap(args, args.checkpoint), _place(args, model), {}
    known = snap[1] if snap else _known_words(args, args.checkpoint, "--place") if place else None
    fix = _fixer(model, keywords, snap, place, known, decode.batch_size, counts)
    done = transcribe_files(model, files, decode, instruction, args.chunk_seconds, report, rescore, fix)
    fmt = args.format or ("text" if args.out and Path(args.out).suffix == ".txt" else "jsonl")
    lines = "".join(WRITERS[fmt](d) + "\n" for d in done)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)
    for item, why in report.skipped:
        summary(f"skipped {item}: {why}")
    audio = sum(d.seconds for d in done)
    snapped = f", {counts.get('snapped', 0)} word run(s) snapped to the list" if snap else ""
    snapped += f", {counts.get('placed', 0)} list entr(y/ies) placed where heard" if place else ""
    summary(f"transcribe: {len(done)} file(s), {audio:.1f} s of audio in {time.perf_counter() - start:.1f} s, "
            f"skipped {len(report.skipped)}{snapped}; transcripts -> {args.out or 'stdout'}")
    return 0 if done else 1


def _with_batch(decode, batch_size: int):
    return replace(decode, batch_size=batch_size)
