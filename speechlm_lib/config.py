"""The one switch (``SPEECHLM_PROFILE``) and the project's paths.

Profiles:
  * ``smoke`` -- CI: every notebook runs in under a minute on a CPU.
  * ``cpu``   -- the default: real results on a laptop CPU in minutes.
  * ``gpu``   -- hub models and larger data, for a machine with a GPU.

Every stage keeps its own ``@dataclass`` config with one preset per profile
(``XConfig.preset(profile())``); this module only says which profile is on
and where files live.
"""
from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("smoke", "cpu", "gpu")
PROFILE_ENV = "SPEECHLM_PROFILE"


def profile() -> str:
    """The active profile name, from ``$SPEECHLM_PROFILE`` (default ``cpu``)."""
    name = os.environ.get(PROFILE_ENV, "cpu").strip().lower() or "cpu"
    if name not in PROFILES:
        raise ValueError(f"${PROFILE_ENV}={name!r} is not a profile; choose one of {', '.join(PROFILES)}")
    return name


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
