"""Evaluate a system on a test set: decode, align, summarise, with timing and peak memory.

    result = evaluate(SYSTEMS.build("whisper"), test_utts)
    result.summary["wer"], result.ci, result.table()        # corpus figures, 95 % interval, one row a record

`task` chooses the reference and the instruction: ``asr_en`` / ``asr_de`` transcribe (reference: the
transcript), ``ast_de`` translates (reference: the translation; BLEU and chrF are added). Utterances the task
does not apply to (a German clip for ``asr_en``, no translation for ``ast_de``) are left out and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.evaluation.aggregate import bootstrap_wer, summarize
from speechlm_lib.evaluation.memory import PeakMemory
from speechlm_lib.evaluation.records import UttRecord


@dataclass
class Evaluation:
    """One system on one test set."""

    system: str
    test_set: str
    records: list[UttRecord]
    summary: dict
    ci: tuple[float, float]  # 95 % bootstrap interval on WER
    skipped: Report = field(default_factory=Report)  # unreadable audio, and utterances the task does not apply to

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([r.to_dict() for r in self.records])

    def row(self) -> dict:
        """The figures for a results table: WER with its interval, B-/U-WER, RTF, memory."""
        s = self.summary
        keys = ("n", "wer", "cer", "b_wer", "u_wer", "keyword_recall", "rtf", "peak_mb", "bleu", "chrf")
        return {"system": self.system, "test set": self.test_set, **{k: s[k] for k in keys if k in s},
                "wer_low": self.ci[0], "wer_high": self.ci[1]}


def task_items(utts: list[Utterance], task: str, report: Report) -> tuple[list[Utterance], list[str], str | None]:
    """The utterances `task` applies to, their references, and its instruction (None: the model's default)."""
    from speechlm_lib.data.tasks import TASKS

    t = TASKS.build(task)
    kept, refs = [], []
    for u in utts:
        answer = t.answer(u) if t.applies(u) else None
        if answer is None:
            report.skip(u.id, f"task {task} does not apply (language {u.language})")
            continue
        kept.append(u)
        refs.append(answer)
    return kept, refs, (None if task == "asr_en" else t.train[0])


def evaluate(system, utts: list[Utterance], test_set: str = "test", task: str = "asr_en",
             keywords: list[str] | None = None, n_boot: int = 1000, seed: int = 0) -> Evaluation:
    """Decode `utts` with `system` (`systems.System`) and score every utterance (`records.UttRecord`).

    `keywords`: one biasing list for the whole set (given to systems that take one; B-WER counts its words),
    None = no list (B-WER then counts each utterance's own keywords)."""
    report = Report()
    kept, refs, instruction = task_items(utts, task, report)
    if not kept:
        raise ValueError(f"{test_set}: no utterance for task {task} among {len(utts)}")
    with PeakMemory() as mem:
        out = system.decode(kept, keywords=keywords, instruction=instruction)
    report.skipped += out.skipped.skipped
    report.kept = len(kept) - len(out.skipped.skipped)
    bad = {item for item, _ in out.skipped.skipped}
    records = [UttRecord.make(u, text, reference=ref, biasing=keywords or (), seconds=s)
               for u, ref, text, s in zip(kept, refs, out.texts, out.seconds) if u.id not in bad]
    summary = summarize(records, translation=task.startswith("ast"))
    summary.update(peak_mb=mem.peak_mb, peak_delta_mb=mem.delta_mb, guarded=out.guarded)
    if mem.cuda_peak_mb is not None:
        summary["cuda_peak_mb"] = mem.cuda_peak_mb
    return Evaluation(getattr(system, "label", None) or system.name, test_set, records, summary, bootstrap_wer(records, n_boot, seed), report)
