"""``speechlm``: the parser (one subcommand a module function) and the dispatch.

    speechlm corpus     [--preset P | --config F] [--set k=v ...]
    speechlm train      STAGE [--preset P | --config F] [--set k=v ...] [--out RUN]
    speechlm evaluate   --checkpoint RUN [--split test] [--set k=v ...]
    speechlm transcribe AUDIO... --checkpoint RUN [--out F] [--keywords a,b] [--batch-size N]
    speechlm export     --checkpoint RUN --out FOLDER [--push-to-hub REPO_ID]

A bad argument (an unknown stage or setting, a missing file, a folder that is not a checkpoint)
ends with ``speechlm <command>: error: <what and where>`` and exit code 2; ``SPEECHLM_DEBUG=1``
shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys

from speechlm_lib.cli.common import CLIError

USAGE_ERRORS = (CLIError, FileNotFoundError, KeyError, ValueError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    from speechlm_lib.cli import commands, transcribe
    from speechlm_lib.cli.stages import STAGES

    stages = "\n".join(f"  {n:8s} {STAGES.get(n).about}; presets: {', '.join(STAGES.get(n).config.presets())}"
                       for n in STAGES.names())
    parser = argparse.ArgumentParser(
        prog="speechlm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Give a large language model ears: build data, train a stage, evaluate, transcribe, export.",
        epilog=f"stages (speechlm train STAGE --help lists the settings):\n{stages}\n\n"
               "multi-GPU: accelerate launch --config_file configs/accelerate/ddp.yaml -m speechlm_lib train stage2 ...\n"
               "docs: docs/own_data.md (your own data), docs/scale_out.md (several GPUs)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (*commands.COMMANDS, transcribe.add_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except USAGE_ERRORS as e:
        if os.environ.get("SPEECHLM_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"speechlm {args.command}: error: {message}", file=sys.stderr)
        return 2
