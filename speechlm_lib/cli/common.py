"""What every subcommand shares: ``--config`` / ``--preset`` / ``--set``, the settings listing for
``--help``, finding a saved model, a run folder's files, and the one-line summary."""
from __future__ import annotations

import inspect
import json
import re
import shlex
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

from speechlm_lib.config import StageConfig, profile

RUN_FILE = "run.json"  # which stage wrote a run folder, and its summary
RESULTS_FILE = "results.json"  # the run's metrics, data and command (the model card is made from it)
MODEL_DIR = "model"  # the saved SpeechLM inside a run folder


class CLIError(Exception):
    """A usage error: printed as ``speechlm <command>: error: <message>``, exit code 2."""


def add_config_args(parser, cls: type[StageConfig] | None = None) -> None:
    """``--config FILE``, ``--preset NAME`` and repeatable ``--set key=value``."""
    presets = f" ({', '.join(cls.presets())})" if cls is not None else ""
    parser.add_argument("--config", metavar="FILE", help="a YAML config file (e.g. a run's config.yaml)")
    parser.add_argument("--preset", metavar="NAME",
                        help=f"a preset{presets}; default: $SPEECHLM_PROFILE ({profile()})")
    parser.add_argument("--set", dest="settings", metavar="KEY=VALUE", action="append", default=[],
                        help="change one setting, e.g. --set train.max_steps=100 (repeatable; see the list below)")


def load_config(cls: type[StageConfig], args, default: Path | None = None) -> StageConfig:
    """``--config`` (else `default`, else ``--preset`` / the profile's preset), then every ``--set``."""
    if args.config and args.preset:
        raise CLIError("give --config or --preset, not both")
    if args.config:
        cfg = cls.from_file(args.config)
    elif default is not None and default.is_file() and not args.preset:
        cfg = cls.from_file(default)
    else:
        cfg = cls.preset(args.preset or profile())
    return cfg.override(args.settings)


# ----- the settings listing ------------------------------------------------------------------
_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def _comments(cls) -> dict[str, str]:
    """Each field's trailing ``# comment`` in `cls`'s source (first line only)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    return {m.group(1): (m.group(2) or "").strip() for line in lines if (m := _FIELD.match(line))}


def settings_lines(obj, prefix: str = "") -> list[str]:
    """``key = value  # what it is`` for every leaf setting of a config tree (dotted keys)."""
    out, notes = [], _comments(type(obj))
    for f in fields(obj):
        if not f.init:
            continue
        value, key = getattr(obj, f.name), prefix + f.name
        if is_dataclass(value):
            out += settings_lines(value, key + ".")
        else:
            note = notes.get(f.name, "")
            out.append(f"  {key} = {value!r}" + (f"  # {note[:100]}" if note else ""))
    return out


def stage_epilog(cls: type[StageConfig], name: str | None = None) -> str:
    """Presets and settings of a stage config, for ``--help``."""
    preset = name or (profile() if profile() in cls.presets() else cls.presets()[0])
    head = (f"presets (configs/{cls.config_name}/): {', '.join(cls.presets())}\n"
            f"settings (--set key=value; values as in the '{preset}' preset):")
    return head + "\n" + "\n".join(settings_lines(cls.preset(preset)))


# ----- run folders ---------------------------------------------------------------------------
def command_line(argv: list[str]) -> str:
    """The command as typed, for results.json ('the command that reproduces them')."""
    return "speechlm " + shlex.join(argv)


def write_run(run_dir: Path, stage: str, metrics: dict, command: str, seconds: float, **extra) -> Path:
    """``run.json`` (stage, summary) and ``results.json`` in the layout of `speechlm_lib.results`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {"metrics": _plain(metrics), "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "command": command, "seconds": round(seconds, 1), **_plain(extra)}
    (run_dir / RESULTS_FILE).write_text(json.dumps({"profile": profile(), "stages": {stage: entry}}, indent=2))
    (run_dir / RUN_FILE).write_text(json.dumps({"stage": stage, "command": command}, indent=2))
    return run_dir / RESULTS_FILE


def run_stage(folder: Path) -> str | None:
    """The stage that wrote run folder `folder` (None when it is not one)."""
    f = folder / RUN_FILE
    return json.loads(f.read_text())["stage"] if f.is_file() else None


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    return round(v, 4) if isinstance(v, float) else v


# ----- saved models ----------------------------------------------------------------------------
def model_folder(checkpoint: str) -> str | Path:
    """The folder holding ``speechlm.json`` for a model folder, a run folder (its ``model/``) or an
    export; a hub repo id is passed through. Anything else is an error naming the path."""
    from speechlm_lib.models.speechlm import CONFIG_NAME

    path = Path(checkpoint).expanduser()
    if path.is_dir():
        for folder in (path, path / MODEL_DIR):
            if (folder / CONFIG_NAME).is_file():
                return folder
        raise CLIError(f"{path}: not a saved SpeechLM (no {CONFIG_NAME} in it or in {MODEL_DIR}/): give the folder "
                       f"`speechlm train` wrote, its {MODEL_DIR}/ folder, or a `speechlm export` folder")
    if path.exists():
        raise CLIError(f"{path}: is a file, not a saved SpeechLM folder")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", checkpoint) and not checkpoint.startswith((".", "/")):
        return checkpoint  # a hub repo id (`SpeechLM.from_pretrained` downloads it)
    raise CLIError(f"{checkpoint}: no such checkpoint folder")


def run_folder(checkpoint: str) -> Path | None:
    """The run folder a checkpoint belongs to (its config.yaml and results.json), if any."""
    path = Path(checkpoint).expanduser()
    for folder in (path, path.parent):
        if (folder / RUN_FILE).is_file() or (folder / "config.yaml").is_file():
            return folder
    return None


def load_model(checkpoint: str, dtype: str | None = None):
    """A `SpeechLM` from a run folder, model folder, export folder or hub repo id, on the default device; `dtype`:
    the LLM's (`SpeechLM.from_pretrained`: None = as saved, ``"auto"`` = the faster one here)."""
    from speechlm_lib.models.speechlm import SpeechLM
    from speechlm_lib.training.utils import default_device

    return SpeechLM.from_pretrained(model_folder(checkpoint), dtype=dtype).to(default_device())


def summary(line: str) -> None:
    """The one-line summary a command ends with (stderr, so stdout stays the command's output)."""
    print(line, file=sys.stderr, flush=True)
