"""The whole comparison of notebook 05: every system that exists here on every test set that applies.

A `Spec` names a system (a `systems.SYSTEMS` builder and its keywords), the folder it needs (absent: skipped
with a line), the test sets it is scored on and whether it gets the test set's keyword list. `run_suite` builds
one system at a time, evaluates it, and lets it go before the next (memory stays one model's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from speechlm_lib.evaluation.run import Evaluation, evaluate
from speechlm_lib.evaluation.systems import SYSTEMS, SystemUnavailable


@dataclass
class Spec:
    label: str  # the row name in tables and plots
    system: str  # a SYSTEMS name
    options: dict = field(default_factory=dict)  # its builder's keywords (folder=...)
    sets: tuple[str, ...] | None = None  # test sets it is scored on (None = every one)
    with_list: bool = False  # give it each test set's keyword list (the biasing prompt)
    projector: bool = False  # also score the folder's projector alone (label + " projector")

    def missing(self) -> str | None:
        folder = self.options.get("folder")
        return None if folder is None or Path(folder).is_dir() else f"{folder} is absent"


def set_keywords(utts) -> list[str]:
    """A test set's keyword list: every keyword of its utterances (sorted, once each)."""
    return sorted({k for u in utts for k in u.keywords})


NOISY_SYSTEMS = ("stage 3", "stage 4, no list", "stage 4 + list", "Whisper tiny.en")


def course_specs(runs: Path, clean: tuple[str, ...], noisy: tuple[str, ...] = (),
                 noisy_for: tuple[str, ...] = NOISY_SYSTEMS) -> list[Spec]:
    """Stage 1 (CTC), stage 2 (and its projector), stage 3, stage 4 without and with its list, Whisper tiny.en on
    the `clean` sets; the `noisy` ones for the systems labelled in `noisy_for` (stages 3 and 4 and Whisper; the
    smoke profile names one); faster-whisper on the first clean set."""
    stage4 = runs / "stage4_context"
    clean = tuple(clean)

    def sets(label: str) -> tuple[str, ...]:
        return clean + (tuple(noisy) if label in noisy_for else ())

    return [Spec("stage 1 CTC", "stage1_ctc", {"folder": runs / "stage1_encoder"}, sets=sets("stage 1 CTC")),
            Spec("stage 2", "speechlm", {"folder": runs / "stage2_speechlm"}, sets=sets("stage 2"), projector=True),
            Spec("stage 3", "speechlm", {"folder": runs / "stage3_lora"}, sets=sets("stage 3")),
            Spec("stage 4, no list", "speechlm", {"folder": stage4}, sets=sets("stage 4, no list")),
            Spec("stage 4 + list", "speechlm", {"folder": stage4}, sets=sets("stage 4 + list"), with_list=True),
            Spec("Whisper tiny.en", "whisper", sets=sets("Whisper tiny.en")),
            Spec("faster-whisper int8", "faster_whisper", sets=clean[:1])]


def run_suite(specs: list[Spec], test_sets: dict, say=print, shared: dict | None = None
              ) -> dict[tuple[str, str], Evaluation]:
    """``{(label, test set): Evaluation}`` for every spec that can be built here, on its test sets.

    Consecutive specs of the same system and options (stage 4 without and with its list) share one build;
    speech-LLM folders share a frozen encoder they name alike (`systems.load_speechlm`; `shared` keeps those
    parts, a fresh dict when None)."""
    shared = {} if shared is None else shared
    out = {}
    held: tuple[tuple, object] | None = None  # (system and options, the built system)
    for spec in specs:
        why, system = spec.missing(), None
        key = (spec.system, tuple(sorted((k, str(v)) for k, v in spec.options.items())))
        if why is None and held is not None and held[0] == key:
            system = held[1]
        elif why is None:
            held = None  # let the previous system go before building the next
            options = {**spec.options, "shared": shared} if spec.system in ("speechlm", "projector") else spec.options
            try:
                system = SYSTEMS.build(spec.system, **options)
            except SystemUnavailable as e:
                why = str(e)
        if system is None:
            say(f"{spec.label}: skipped ({why})")
            continue
        held = (key, system)
        system.label = spec.label
        runs = [(system, spec.label)]
        if spec.projector and hasattr(system, "model"):
            runs.append((_projector(system, spec.label), f"{spec.label} projector"))
        for s, label in runs:
            for name, utts in test_sets.items():
                wanted = spec.sets if s is system else tuple(test_sets)[:1]  # the projector: the first set only
                if wanted is None or name in wanted:
                    kw = set_keywords(utts) if spec.with_list else None
                    out[(label, name)] = evaluate(s, utts, name, keywords=kw)
        say(f"{spec.label}: scored on {sum(1 for k in out if k[0] == spec.label)} test set(s)")
        del system, runs
    return out


def _projector(system, label: str):
    p = SYSTEMS.build("projector", model=system.model)
    p.label = f"{label} projector"
    return p


def table(evals: dict) -> pd.DataFrame:
    """One row a (system, test set): WER with its 95 % interval, CER, B-/U-WER, keyword recall, RTF, memory."""
    return pd.DataFrame([e.row() for e in evals.values()])


def list_size_sweep(system, utts, train, sizes: tuple[int, ...]) -> pd.DataFrame:
    """B-WER, U-WER and keyword recall of `system` on `utts` as the keyword list grows: each list holds the
    test set's own keywords first, then names of `train` not in the test set, cut to each size (0 = no list)."""
    own = set_keywords(utts)
    pool = [k for k in set_keywords(train) if k not in set(own)]
    rows = []
    for size in sizes:
        s = evaluate(system, utts, "list sweep", keywords=(own + pool)[:size] if size else None).summary
        rows.append({"list size": size, "B-WER": s["b_wer"], "U-WER": s["u_wer"], "keyword recall": s["keyword_recall"]})
    return pd.DataFrame(rows)


def sweep_figure(sweep: pd.DataFrame, title: str):
    """B-WER and U-WER (percent) against the list size of a `list_size_sweep` table: a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for key in ("B-WER", "U-WER"):
        ax.plot(sweep["list size"], 100 * sweep[key], marker="o", label=key)
    ax.set(title=f"{title}: errors against the size of the list", xlabel="keyword list size (words)",
           ylabel="error rate (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig
