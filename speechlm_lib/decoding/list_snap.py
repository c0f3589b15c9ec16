"""Snapping to the list: after decoding, a word the speech-LLM spelt *almost* like a list entry becomes that entry.

The ICT model often half-copies a name from its list: given "Crolovre" it writes "Krolovre", given "Rotraut" it
keeps the projector's "Broaard" (docs/stage4_findings.md). Contextual spelling correction after the recogniser
is the classic cheap fix: every run of 1-3 words of the hypothesis is compared with every list entry (letters
only, spaces and case ignored, a possessive "'s" kept aside), and the best matches scoring at least
``min_score`` replace their words, best first, never two on the same words, each entry once. A word that
already is a list entry is left alone, and so, given the training vocabulary (`known`), is a run that begins or
ends with a word heard in training: "Capital" is a word the model knows, not a garbled "Capelli". It costs no
prompt tokens and no LLM pass::

    text, swaps = snap_to_list("The Krolovre manual.", ["Crolovre", "Zadoki"], ListSnapConfig(min_score=0.7))
    # -> "The Crolovre manual.", [("Krolovre", "Crolovre")]

``min_score`` is chosen on the dev split (`tune_min_score`), never on test: too low and distractors replace real
words (false alarms), too high and nothing changes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from pathlib import Path

from speechlm_lib.data.text import normalize

_WORD = re.compile(r"[^\W_][\w'\u2019-]*")
_POSSESSIVE = re.compile(r"['\u2019]s$")
SNAP_GRID = (0.0, 0.01, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)  # min_score
#   tried (0 = off); dev WER still fell at 0.3, the old lowest point (docs/stage4_findings.md), so it goes lower


@dataclass
class ListSnapConfig:
    """Whether and how decoded words snap to the biasing list."""

    min_score: float = 0.0  # snap a run of words to an entry at this similarity (0..1) or more; 0 = off
    names_only: bool = True  # only runs that start with a capital letter (the LLM writes names capitalised)
    max_words: int = 3  # the longest run of hypothesis words compared with one entry
    unseen_only: bool = True  # with a training vocabulary given, a run must begin and end with words outside it


def _key(text: str) -> str:
    """Letters and digits only, lower case: what is compared ("Zv Morrusou" -> "zvmorrusou")."""
    return normalize(text).replace(" ", "").replace("'", "")


def _known(word: str, known: set[str]) -> bool:
    """Whether every normalised part of `word`, as written ("Let's") or without its possessive ("Peter"), is in
    the vocabulary `known`."""
    for form in (word, _POSSESSIVE.sub("", word)):
        parts = normalize(form).split()
        if parts and all(p in known for p in parts):
            return True
    return False


def training_vocabulary(texts) -> set[str]:
    """Every `normalize`d word of `texts` (the training transcripts): the words `snap_to_list` trusts."""
    return {w for t in texts for w in normalize(t).split()}


WORDS_FILE = "training_words.txt"  # beside a saved model: the words its training transcripts hold, one a line


def save_training_words(directory: str | Path, texts) -> Path:
    """Write `training_vocabulary(texts)` to ``<directory>/training_words.txt`` (sorted, one a line), so
    ``speechlm transcribe --snap`` knows which words the model heard in training."""
    path = Path(directory) / WORDS_FILE
    path.write_text("".join(w + "\n" for w in sorted(training_vocabulary(texts))), encoding="utf-8")
    return path


def load_training_words(path: str | Path) -> set[str] | None:
    """The training vocabulary of a text file (any transcripts, or `save_training_words`' list; every line's
    words are normalised); `path` may be a model folder holding ``training_words.txt``. None if there is none."""
    path = Path(path)
    path = path / WORDS_FILE if path.is_dir() else path
    if not path.is_file():
        return None
    return training_vocabulary(path.read_text(encoding="utf-8").splitlines())


def snap_to_list(hypothesis: str, entries: list[str] | None, cfg: ListSnapConfig,
                 known: set[str] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """`hypothesis` with its near-misses of `entries` replaced (see the module docstring); `known`: the training
    vocabulary (`training_vocabulary`), used when ``cfg.unseen_only``. Returns the new text and the swaps made,
    ``[(words replaced, entry), ...]``; unchanged when off or the list is empty."""
    if cfg.min_score <= 0 or not entries or not hypothesis:
        return hypothesis, []
    words = list(_WORD.finditer(hypothesis))
    trusted = [cfg.unseen_only and known is not None and _known(w.group(), known) for w in words]
    keys = {_key(e): e for e in entries if _key(e)}
    present = {i: keys[k] for i, w in enumerate(words) if (k := _key(_POSSESSIVE.sub("", w.group()))) in keys}
    protected = set(present)  # words that already are entries: never replaced, and their entries not used again
    candidates, matcher = [], SequenceMatcher(autojunk=False)
    for entry_key, entry in keys.items():
        matcher.set_seq2(entry_key)
        for i in range(len(words)):
            if (cfg.names_only and not words[i].group()[0].isupper()) or trusted[i]:
                continue
            for j in range(i + 1, min(len(words), i + cfg.max_words) + 1):
                if protected & set(range(i, j)):
                    break
                if trusted[j - 1]:
                    continue
                matcher.set_seq1(_key(_POSSESSIVE.sub("", hypothesis[words[i].start():words[j - 1].end()])))
                if matcher.real_quick_ratio() >= cfg.min_score and matcher.quick_ratio() >= cfg.min_score:
                    score = matcher.ratio()
                    if score >= cfg.min_score:
                        candidates.append((score, -i, -j, entry))
    taken, used, swaps = set(), set(present.values()), []
    for score, neg_i, neg_j, entry in sorted(candidates, reverse=True):
        span = set(range(-neg_i, -neg_j))
        if span & taken or entry in used:
            continue
        taken |= span
        used.add(entry)
        swaps.append((-neg_i, -neg_j, entry))
    out, swapped = hypothesis, []
    for i, j, entry in sorted(swaps, reverse=True):  # right to left: earlier offsets stay valid
        start, end = words[i].start(), words[j - 1].end()
        suffix = m.group() if (m := _POSSESSIVE.search(out[start:end])) and not _POSSESSIVE.search(entry) else ""
        swapped.append((out[start:end], entry))
        out = out[:start] + entry + suffix + out[end:]
    return out, swapped[::-1]


def snap_all(hypotheses: list[str], lists: list, cfg: ListSnapConfig,
             known: set[str] | None = None) -> tuple[list[str], int]:
    """`snap_to_list` over a test set (``lists[i]`` for ``hypotheses[i]``): the new texts and the number of swaps."""
    out, count = [], 0
    for hyp, words in zip(hypotheses, lists):
        text, swaps = snap_to_list(hyp, words, cfg, known)
        out.append(text)
        count += len(swaps)
    return out, count


def tune_min_score(refs: list[str], hypotheses: list[str], lists: list, grid=SNAP_GRID,
                   base: ListSnapConfig | None = None, known: set[str] | None = None) -> tuple[float, list[dict]]:
    """The ``min_score`` of `grid` with the lowest WER on these (dev) utterances, and each point's scores.

    `refs`, `hypotheses` and `lists` are parallel and may pool several list conditions (e.g. N = 0 and N = 100)
    so the choice holds for short and long lists; ties go to the higher score (fewer swaps). `base`: the other
    settings (`ListSnapConfig`), `known`: the training vocabulary. The rows' B-WER and false alarms count the
    words of `lists` (the lists as given to the model, filtered or not); WER, the criterion, does not depend on it."""
    base = base or ListSnapConfig()
    return tune_by_wer(refs, lists, grid, "min_score", "swaps",
                       lambda score: snap_all(hypotheses, lists, replace(base, min_score=score), known))


def tune_by_wer(refs: list[str], lists: list, grid, name: str, count: str, apply) -> tuple[float, list[dict]]:
    """The point of `grid` whose texts, ``apply(point) -> (texts, changes)``, have the lowest WER against `refs`
    (ties: the higher point), and each point's row: ``{name: point, wer, b_wer, u_wer, false_alarms, count:
    changes}`` (B-WER and false alarms over `lists`). Shared by the list post-processing steps' tuning."""
    from speechlm_lib.metrics_bias import biasing_scores

    rows = []
    for point in grid:
        texts, changes = apply(point)
        s = biasing_scores(refs, texts, lists)
        rows.append({name: point, "wer": s["wer"], "b_wer": s["b_wer"], "u_wer": s["u_wer"],
                     "false_alarms": s["false_alarms"], count: changes})
    best = min(rows, key=lambda r: (round(r["wer"], 9), -r[name]))
    return best[name], rows
