"""The repetition guard: a decoder that loops ("sure if sure if sure if ...") is cut after the loop's third copy.

Every looped word is an insertion, so a loop costs far more WER than one wrong word. Two uses:

* `cut_repetitions(text)`: the text ended after the `max_repeats`-th copy of its first n-gram (n = 1 ..
  `max_ngram` words, case and trailing punctuation ignored) that runs more than `max_repeats` times in a row;
* `loop_closed(text)`: True once that cut can no longer move as more tokens are written, so a decoder may stop
  the row there (`decoding.speculative`) and get exactly the text the cut would leave of the whole answer.

Why stopping early is exact: `first_loop` returns the cut of the *first* position whose run is too long. More
words can neither shorten that run nor make an earlier position's run too long: an earlier run that reached the
end and covered the found loop would, by the periodicity lemma (a stretch with periods n and n' and length >=
n + n' - gcd has period gcd), give an earlier or shorter run with more than `max_repeats` copies, which the scan
would have found first. Only the last word of a partly written answer can still change (a next token may extend
it), so `loop_closed` leaves it out. `tests/test_repetition.py` checks this on random word sequences.
"""
from __future__ import annotations


def first_loop(words: list[str], max_ngram: int, max_repeats: int) -> int | None:
    """Where the text should end: the index after the `max_repeats`-th copy of the first n-gram that runs
    more than `max_repeats` times in a row, or None when none does."""
    for i in range(len(words)):
        for n in range(1, max_ngram + 1):
            gram, copies, j = words[i:i + n], 1, i + n
            if len(gram) < n:
                break
            while words[j:j + n] == gram:
                copies, j = copies + 1, j + n
            if copies > max_repeats:
                return i + n * max_repeats
    return None


def _words(text: str) -> list[str]:
    return [w.lower().strip(".,!?;:") for w in text.split()]


def cut_repetitions(text: str, max_ngram: int = 4, max_repeats: int = 3) -> str:
    """`text` cut after the `max_repeats`-th copy of its first n-gram loop (`first_loop`); else unchanged."""
    words = text.split()
    end = first_loop(_words(text), max_ngram, max_repeats)
    return text if end is None else " ".join(words[:end])


def loop_closed(text: str, max_ngram: int = 4, max_repeats: int = 3) -> bool:
    """True when a partly written answer `text` already holds a loop `cut_repetitions` cuts, at a place that
    no continuation can change (its last word, which a next token may extend, is left out)."""
    return first_loop(_words(text)[:-1], max_ngram, max_repeats) is not None
