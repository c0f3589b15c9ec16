"""Share a trained speech-LLM: a hub-ready folder, and `push_to_hub` when online.

``export_model(model_dir, out, run_dir)`` writes::

    out/speechlm.json            the model: frozen parts by reference (hub id or path), projector settings
    out/trainable.safetensors    the trained weights (projector, and adapters / any unfrozen part)
    out/...                      any other file the saved model has (e.g. a stage's adapter files)
    out/config.yaml              the run's resolved config (rerun: speechlm train STAGE --config config.yaml)
    out/results.json             the run's metrics, data and command
    out/README.md                the model card, generated from results.json

and ``SpeechLM.from_pretrained(out)`` (or the hub repo id once pushed) loads it. The frozen encoder
and LLM are *not* copied: they are named by hub id, so a folder whose parts were local paths only
loads where those paths exist (`export_model` returns such warnings).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from speechlm_lib.models.speechlm import CONFIG_NAME

CARD_NAME = "README.md"


def export_model(model_dir: str | Path, out: str | Path, run_dir: str | Path | None = None,
                 repo_id: str | None = None) -> tuple[Path, list[str]]:
    """Copy the saved model in `model_dir` (+ the run's config.yaml and results.json) to `out` and write
    the model card. Returns ``(out, warnings)``; `repo_id` only names the repo in the card's examples."""
    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{model_dir}: no {CONFIG_NAME} (not a saved SpeechLM)")
    if out.resolve() == model_dir.resolve():
        raise ValueError(f"{out}: the export folder must not be the model folder itself")
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        (shutil.copytree(f, out / f.name, dirs_exist_ok=True) if f.is_dir() else shutil.copy2(f, out / f.name))
    results = {}
    for name in ("config.yaml", "results.json"):
        src = Path(run_dir) / name if run_dir else None
        if src is not None and src.is_file():
            shutil.copy2(src, out / name)
    if (out / "results.json").is_file():
        results = json.loads((out / "results.json").read_text())
    model = json.loads((out / CONFIG_NAME).read_text())
    (out / CARD_NAME).write_text(model_card(model, results, repo_id or str(out)), encoding="utf-8")
    return out, portability_warnings(model)


def portability_warnings(model: dict) -> list[str]:
    """The frozen parts named by a local path (they will not load on another machine)."""
    refs = {"encoder": model["encoder"].get("name"), "LLM": model["llm"].get("source")}
    return [f"the {part} is referenced by the local path {ref}: it loads only where that path exists "
            f"(train with a hub id, e.g. --set model.llm=HuggingFaceTB/SmolLM2-135M-Instruct, to share it)"
            for part, ref in refs.items() if ref and Path(str(ref)).expanduser().exists()]


def model_card(model: dict, results: dict, repo_id: str) -> str:
    """A hub model card (YAML front matter + Markdown) from ``speechlm.json`` and a results.json."""
    enc, llm = model["encoder"].get("name", "?"), model["llm"].get("source", "?")
    stages = results.get("stages", {})
    stage, entry = next(iter(stages.items()), (None, {}))
    metrics = entry.get("metrics", {})
    front = ["---", "library_name: speechlm_lib", "pipeline_tag: automatic-speech-recognition",
             "tags: [speech-llm, slam-asr]", f"base_model: [{json.dumps(llm)}, {json.dumps(enc)}]", "---", ""]
    rows = [f"| {k} | {v} |" for k, v in metrics.items() if isinstance(v, (int, float, str, bool))]
    body = [
        f"# {repo_id}", "",
        f"A speech-LLM: the speech encoder `{enc}` -> a `{model['projector']['name']}` projector "
        f"(stride {model['projector']['stride']}) -> the LLM `{llm}` ({model['llm'].get('dtype', 'float32')}). "
        f"Frozen: encoder {model['freeze_encoder']}, LLM {model['freeze_llm']}; this repo holds only the trained "
        "weights (`trainable.safetensors`) and names the frozen parts by reference (hub id or path).", "",
        "## Data", "", entry.get("data", "not recorded"), "",
        f"## Results{f' ({stage})' if stage else ''}", "",
        *(["| metric | value |", "|---|---|", *rows] if rows else ["No results recorded."]), "",
        "Recorded " + entry.get("recorded_at", "?") + (f", {entry['seconds']} s" if "seconds" in entry else "") + ".",
        "", "## Reproduce", "", "```bash", entry.get("command", "# the command was not recorded"), "```", "",
        "The resolved settings are in `config.yaml` (`speechlm train STAGE --config config.yaml`).", "",
        "## Use", "", "```python", "from speechlm_lib.models.speechlm import SpeechLM",
        f"model = SpeechLM.from_pretrained({json.dumps(repo_id)})", "```", "", "```bash",
        f"speechlm transcribe --checkpoint {repo_id} recordings/ --out transcripts.jsonl", "```", "",
    ]
    return "\n".join(front + body)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (or reuse) the model repo `repo_id` and upload `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message="speechlm export")
    return str(getattr(info, "commit_url", info))
