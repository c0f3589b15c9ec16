"""``speechlm corpus``, ``train STAGE``, ``evaluate`` and ``export``: each a parser and a run function
(``transcribe`` has its own module). Every run ends with a one-line summary naming where the outputs are."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from speechlm_lib.cli.common import (
    RESULTS_FILE,
    CLIError,
    add_config_args,
    command_line,
    load_config,
    load_model,
    model_folder,
    run_folder,
    run_stage,
    stage_epilog,
    summary,
)
from speechlm_lib.cli.stages import STAGES, stage
from speechlm_lib.config import profile, runs_dir

RAW = argparse.RawDescriptionHelpFormatter


# ----- corpus ----------------------------------------------------------------------------------------
def add_corpus(sub) -> None:
    from speechlm_lib.data.corpus import CorpusConfig

    p = sub.add_parser("corpus", help="synthesise (or finish) the eSpeak NG corpus", formatter_class=RAW,
                       description="Build the synthetic corpus of a preset (files already made are reused).",
                       epilog=stage_epilog(CorpusConfig))
    p.add_argument("--out", help="output folder (default: <data>/synth/<name>)")
    add_config_args(p, CorpusConfig)
    p.set_defaults(func=run_corpus)


def run_corpus(args, argv) -> int:
    from speechlm_lib.data.corpus import BuildReport, CorpusConfig, build_corpus, default_dir

    cfg, report = load_config(CorpusConfig, args), BuildReport()
    manifests = build_corpus(cfg, args.out, report=report)
    counts = {s: sum(1 for line in open(p, encoding="utf-8") if line.strip()) for s, p in manifests.items()}
    out = Path(args.out) if args.out else default_dir(cfg.name)
    summary(f"corpus {cfg.name}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
            + f" utterances ({report.made} made, {report.reused} reused, {len(report.failed.skipped)} failed) "
              f"in {report.seconds:.0f} s -> {out}")
    return 0


# ----- train -----------------------------------------------------------------------------------------
def add_train(sub) -> None:
    lines = [f"  {name:8s} {STAGES.get(name).about}; presets: {', '.join(STAGES.get(name).config.presets())}"
             for name in STAGES.names()]
    p = sub.add_parser("train", help="train a stage", formatter_class=RAW,
                       description="Train a stage. `speechlm train STAGE --help` lists its settings.",
                       epilog="stages:\n" + "\n".join(lines))
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name in STAGES.names():
        spec = STAGES.get(name)
        sp = stages.add_parser(name, help=spec.about, description=spec.about, formatter_class=RAW,
                               epilog=stage_epilog(spec.config))
        sp.add_argument("--out", help=f"run folder (default: runs/<profile>/{name})")
        add_config_args(sp, spec.config)
        sp.set_defaults(func=run_train)


def run_train(args, argv) -> int:
    spec = stage(args.stage)
    cfg = load_config(spec.config, args)
    run_dir = Path(args.out) if args.out else runs_dir() / (args.preset or profile()) / args.stage
    run_dir.mkdir(parents=True, exist_ok=True)
    out = spec.run(cfg, run_dir, command_line(argv))
    if out["line"]:
        summary(out["line"])
    _end_distributed()
    return 0


def _end_distributed() -> None:
    """Close the process group of a multi-process launch (the trainer leaves it open between phases)."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()


# ----- evaluate --------------------------------------------------------------------------------------
def add_evaluate(sub) -> None:
    from speechlm_lib.recipes.stage2_align import Stage2Config

    p = sub.add_parser("evaluate", help="WER of a saved model on a split of a config's data", formatter_class=RAW,
                       description="Decode a split of the data a config names (by default the run's own "
                                   "config.yaml) with a saved model and score it.",
                       epilog=stage_epilog(Stage2Config))
    p.add_argument("--checkpoint", required=True, help="a run folder, its model/ folder, an export or a repo id")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"))
    p.add_argument("--out", help="where eval_<split>.json/.jsonl go (default: the run folder, else .)")
    add_config_args(p, Stage2Config)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args, argv) -> int:
    from speechlm_lib.data.records import Report
    from speechlm_lib.recipes.stage2_align import evaluate_wer, load_splits

    start = time.perf_counter()
    model_folder(args.checkpoint)  # a bad checkpoint fails before any data is read
    run_dir = run_folder(args.checkpoint)
    cls = stage(run_stage(run_dir) or "stage2").config if run_dir else stage("stage2").config
    cfg = load_config(cls, args, default=run_dir / "config.yaml" if run_dir else None)
    report = Report()
    utts = load_splits(cfg, report)[args.split]
    if not utts:
        raise CLIError(f"the config's data source gives no {args.split} utterances")
    model = load_model(args.checkpoint)
    scores = evaluate_wer(model, utts, cfg.decode, progress=True)
    out = Path(args.out) if args.out else (run_dir or Path("."))
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"wer": scores["wer"], "cer": scores["cer"], "rtf": scores["rtf"], "utterances": len(utts),
               "truncated": scores["truncated"], "skipped": len(report.skipped), "checkpoint": str(args.checkpoint),
               "command": command_line(argv)}
    (out / f"eval_{args.split}.json").write_text(json.dumps(metrics, indent=2))
    with open(out / f"eval_{args.split}.jsonl", "w", encoding="utf-8") as f:
        for u, ref, hyp in zip(utts, scores["refs"], scores["hyps"]):
            f.write(json.dumps({"id": u.id, "ref": ref, "hyp": hyp}, ensure_ascii=False) + "\n")
    summary(f"evaluate: {args.split} WER {scores['wer']:.3f}, CER {scores['cer']:.3f} on {len(utts)} utterances "
            f"in {time.perf_counter() - start:.0f} s -> {out / f'eval_{args.split}.json'}")
    return 0


# ----- export ----------------------------------------------------------------------------------------
def add_export(sub) -> None:
    p = sub.add_parser("export", help="a hub-ready folder (weights, config, model card); --push-to-hub uploads it",
                       description=export_doc(), formatter_class=RAW)
    p.add_argument("--checkpoint", required=True, help="a run folder (speechlm train) or its model/ folder")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this hub model repo")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    p.set_defaults(func=run_export)


def export_doc() -> str:
    from speechlm_lib import export

    return export.__doc__


def run_export(args, argv) -> int:
    from speechlm_lib.export import export_model, push_to_hub

    folder = model_folder(args.checkpoint)
    if not isinstance(folder, Path):
        raise CLIError(f"{args.checkpoint}: export needs a local run or model folder")
    run_dir = run_folder(args.checkpoint)
    if run_dir is None or not (run_dir / RESULTS_FILE).is_file():
        summary(f"note: no {RESULTS_FILE} beside {folder}: the model card will have no results")
    out, warnings = export_model(folder, args.out, run_dir, repo_id=args.push_to_hub)
    for w in warnings:
        summary(f"warning: {w}")
    where = str(out)
    if args.push_to_hub:
        where += f" and {push_to_hub(out, args.push_to_hub, private=args.private)}"
    summary(f"export: {len(list(out.iterdir()))} files -> {where} (load: SpeechLM.from_pretrained({str(out)!r}))")
    return 0


COMMANDS = (add_corpus, add_train, add_evaluate, add_export)
