"""The one switch (``SPEECHLM_PROFILE``) and the project's paths.

Profiles:
  * ``smoke`` -- CI: every notebook runs in under a minute on a CPU.
  * ``cpu``   -- the default: real results on a laptop CPU in minutes.
  * ``gpu``   -- hub models and larger data, for a machine with a GPU.

Every stage keeps its own ``@dataclass`` config, a `StageConfig`, with one preset file per
profile in ``configs/<stage>/<profile>.yaml`` (``XConfig.preset(profile())``); this module says
which profile is on, where files live, and how a config is read, overridden and saved.
"""
from __future__ import annotations

import ast
import copy
import os
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import ClassVar

PROFILES = ("smoke", "cpu", "gpu")
PROFILE_ENV = "SPEECHLM_PROFILE"
THREADS_ENV = "SPEECHLM_THREADS"


def profile() -> str:
    """The active profile name, from ``$SPEECHLM_PROFILE`` (default ``cpu``)."""
    name = os.environ.get(PROFILE_ENV, "cpu").strip().lower() or "cpu"
    if name not in PROFILES:
        raise ValueError(f"${PROFILE_ENV}={name!r} is not a profile; choose one of {', '.join(PROFILES)}")
    return name


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads of one core count once).

    Read from ``/sys/devices/system/cpu/cpu*/topology/thread_siblings_list`` for the CPUs in the
    process's affinity mask; where that is unreadable, the number of CPUs available."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(path.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def _positive_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not a whole number of threads") from None
    if value < 1:
        raise ValueError(f"${name}={raw!r}: need at least 1 thread")
    return value


def threads() -> int:
    """The torch CPU thread count the library uses: ``$SPEECHLM_THREADS``, else ``$OMP_NUM_THREADS``,
    else the physical cores (`physical_cores`).

    On a machine shared with other work, fewer threads than cores is faster: each extra thread waits
    for a core someone else holds (on the 2-core course machine under load, the smoke tutorial took
    11 min with 2 threads and under 2 min with 1). Set ``SPEECHLM_THREADS=1`` there."""
    return _positive_int(THREADS_ENV) or _positive_int("OMP_NUM_THREADS") or physical_cores()


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to `n` (None: `threads()`); returns the number set.

    Notebooks call it in their first cell, benchmarks and the tutorial runner at start."""
    import torch

    n = n or threads()
    torch.set_num_threads(n)
    return n


def repo_root() -> Path:
    """The repository root (the folder holding ``speechlm_lib/``)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Where corpora are built: ``$SPEECHLM_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("SPEECHLM_DATA", repo_root() / "data"))


def runs_dir() -> Path:
    """Where checkpoints, logs and results go: ``$SPEECHLM_RUNS`` or ``<repo>/runs``."""
    return Path(os.environ.get("SPEECHLM_RUNS", repo_root() / "runs"))


def cache_dir() -> Path:
    """Where converted models and feature caches live: ``$SPEECHLM_CACHE`` or ``~/.cache/speechlm``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "speechlm"
    return Path(os.environ.get("SPEECHLM_CACHE", default))


def shared_data_dir() -> Path:
    """The optional real-speech folder beside the repository (``../shared/data``)."""
    return Path(os.environ.get("SPEECHLM_SHARED_DATA", repo_root().parent / "shared" / "data"))


def configs_dir() -> Path:
    """The stages' preset files, ``<repo>/configs/<stage>/<preset>.yaml`` (``$SPEECHLM_CONFIGS`` overrides)."""
    return Path(os.environ.get("SPEECHLM_CONFIGS", repo_root() / "configs"))


class StageConfig:
    """What every stage's ``@dataclass`` config shares: presets as YAML files, ``key=value`` overrides,
    and saving the resolved tree beside a checkpoint or in results.json.

    A subclass names its folder under `configs_dir()` in ``config_name``; ``Cfg.preset("cpu")`` reads
    ``configs/<config_name>/cpu.yaml``. A file may leave fields out (their defaults apply); an unknown
    key is an error naming the file and the key.
    """

    config_name: ClassVar[str] = ""

    @classmethod
    def presets(cls) -> list[str]:
        """The preset names there are for this stage (the YAML files in its folder)."""
        return sorted(p.stem for p in (configs_dir() / cls.config_name).glob("*.yaml"))

    @classmethod
    def preset(cls, name: str):
        path = configs_dir() / cls.config_name / f"{name}.yaml"
        if not path.is_file():
            raise KeyError(f"unknown {cls.config_name} preset {name!r}; known: {', '.join(cls.presets())}")
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | Path):
        """A config from a YAML (or JSON) file; errors name the file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return cls.from_dict(data)
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    @classmethod
    def from_dict(cls, data: dict):
        """The dataclass tree from plain values (lists become tuples where a field is a tuple)."""
        return _build(cls, data)

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=110)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (``<dir>/config.yaml`` when `path` is a folder)."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    def override(self, assignments):
        """A copy with dotted settings changed by ``"key=value"`` strings, e.g.
        ``["train.max_steps=100", "model.llm=HuggingFaceTB/SmolLM2-360M-Instruct"]``.

        Values are read as Python literals (``100``, ``2e-3``, ``None``, ``{"hidden": 2048}``) or YAML's
        ``true`` / ``false`` / ``null``, anything else as text. An unknown key raises ``KeyError`` naming it; a
        switch (a bool setting) given anything but true or false raises ``ValueError``."""
        cfg = copy.deepcopy(self)
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"setting {item!r} is not key=value")
            *path, leaf = key.strip().split(".")
            obj = cfg
            for part in path:
                obj = getattr(obj, part, None) if is_dataclass(obj) else None
            if not is_dataclass(obj) or leaf not in {f.name for f in fields(obj)}:
                raise KeyError(f"unknown setting {key.strip()!r} (a None section cannot be set into)")
            value = _literal(raw)
            if typing.get_type_hints(type(obj)).get(leaf) is bool and not isinstance(value, bool):
                raise ValueError(f"setting {key.strip()!r} is true or false, not {raw.strip()!r}")
            setattr(obj, leaf, value)
        return cfg


def _literal(raw: str):
    """A ``--set`` value: a Python literal (``100``, ``2e-3``, ``None``, ``{"hidden": 2048}``), YAML's ``true`` /
    ``false`` / ``null`` (any case, as the preset files write them), anything else as text."""
    raw = raw.strip()
    words = {"true": True, "false": False, "null": None}
    if raw.lower() in words:
        return words[raw.lower()]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _build(cls, data):
    """``cls(**data)`` with nested dataclasses and tuples rebuilt from their type hints."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} needs a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def _coerce(hint, value):
    if value is None:
        return None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if is_dataclass(option) and isinstance(value, dict):
            return _build(option, value)
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
    return value


def _plain(value):
    """Tuples as lists, so YAML and JSON write plain sequences."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
