"""Tasks of the multitask speech-LLM (stage 3): the instruction chooses what the model does with the audio.

A `Task` says which utterances it applies to, the answer it wants for each, its instruction
paraphrases (the ``train`` ones are sampled per example; the ``held_out`` ones are never trained on and
test SLM's zero-shot instruction following) and how it is scored. Tasks come from the `TASKS` registry;
adding one is one decorated builder::

    asr_en   English audio -> English transcript     (WER)
    asr_de   German audio  -> German transcript      (WER)
    ast_de   English audio -> German translation     (BLEU, chrF)
    caps     English audio -> the transcript in capital letters   (never trained: zero-shot)
    names    English audio -> the rare names in it               (never trained: zero-shot)
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.registry import Registry

TASKS = Registry("task")


@dataclass(frozen=True)
class Task:
    """One thing the model can be asked to do with an utterance."""

    name: str  # registry name
    language: str  # language of the audio the task reads ("en", "de")
    answer: Callable[[Utterance], str | None]  # the wanted answer, None when the utterance has none
    train: tuple[str, ...]  # instruction paraphrases used in training (the first is the canonical one)
    held_out: tuple[str, ...] = ()  # paraphrases never seen in training (zero-shot instruction following)
    metric: str = "wer"  # how answers are scored: "wer", "bleu" (BLEU + chrF), "caps", "names"
    trained: bool = True  # False: only ever asked at test time
    draft: bool = True  # the projector's tokens are a useful draft of the answer (a transcript; not a translation)

    def applies(self, utt: Utterance) -> bool:
        return utt.language == self.language and bool((self.answer(utt) or "").strip())

    def instruction(self, rng: random.Random | None = None) -> str:
        """A training paraphrase: random with `rng`, else the canonical one."""
        return rng.choice(self.train) if rng is not None else self.train[0]


@TASKS.register("asr_en")
def _asr_en() -> Task:
    return Task("asr_en", "en", lambda u: u.text,
                train=("Transcribe the audio.", "Write down what is said.", "What does the speaker say?",
                       "Give the transcript of this recording."),
                held_out=("Please type out the spoken words.", "Turn this speech into text."))


@TASKS.register("asr_de")
def _asr_de() -> Task:
    return Task("asr_de", "de", lambda u: u.text,
                train=("Transcribe the German audio.", "Write down the German speech.",
                       "What does the speaker say in German?"),
                held_out=("Type out what is said, in German.",))


@TASKS.register("ast_de")
def _ast_de() -> Task:
    return Task("ast_de", "en", lambda u: u.translation,
                train=("Translate the audio into German.", "Say this in German.",
                       "Give a German translation of what is said."),
                held_out=("Render the speech in German.",), metric="bleu", draft=False)


@TASKS.register("caps")
def _caps() -> Task:
    return Task("caps", "en", lambda u: u.text.upper(), train=("Write the transcript in capital letters.",),
                metric="caps", trained=False)


@TASKS.register("names")
def _names() -> Task:
    return Task("names", "en", lambda u: ", ".join(u.keywords) or None,
                train=("Which names are mentioned? Answer with the names only.",), metric="names", trained=False,
                draft=False)


def get_task(name: str, encoder_languages: tuple[str, ...] | None = None, warn=print) -> Task:
    """The task `name` (an unknown name raises, listing the known ones). When the encoder was trained on
    other languages than the task's audio (German through Whisper tiny.en), it is allowed but said."""
    task = TASKS.build(name)
    if encoder_languages is not None and task.language not in encoder_languages:
        warn(f"task {name!r} reads {task.language!r} audio, but the encoder was trained on "
             f"{', '.join(encoder_languages)} only: expect it to hear less")
    return task


def task_items(tasks: dict[str, float], utts: list[Utterance], report: Report | None = None,
               seed: int = 0) -> list[tuple[Utterance, Task]]:
    """(utterance, task) training pairs mixed by the `tasks` ratios (name -> weight).

    Every utterance a task applies to is a candidate; a task with weight w gets
    ``round(w / max weight x its candidates)`` of them (so the largest task uses all its utterances and the
    others are sub-sampled to their ratio). Utterances a task needs but lacks (no translation) are counted
    in `report`. Shuffled, so batches mix tasks.
    """
    rng, top = random.Random(seed), max(tasks.values())
    pairs = []
    for name, weight in tasks.items():
        task = TASKS.build(name)
        same_language = [u for u in utts if u.language == task.language]
        fits = [u for u in same_language if task.applies(u)]
        if report is not None:
            for u in same_language:
                if not task.applies(u):
                    report.skip(f"{name}:{u.id}", f"{u.audio}: no answer for task {name!r}")
        take = min(len(fits), round(weight / top * len(fits)))
        pairs += [(replace(u), task) for u in rng.sample(fits, take)]  # one object a pair (TaskDataset)
    rng.shuffle(pairs)
    return pairs
