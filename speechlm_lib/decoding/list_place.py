"""Placing spotted names: a list entry the CTC keyword spotter finds in the audio, but the answer lacks, goes where
the spotter heard it (the CTC-assisted step after decoding in SLAM-LLM's contextual ASR).

Snapping (`decoding.list_snap`) repairs a name the speech-LLM spelt *almost* right. It cannot repair one the LLM
dropped, or wrote as an ordinary word ("Rotraut" as "brought out"). The ``ctc`` projector's posteriors still hold
such a name (`decoding.keyword_spot`), and they say *when* it was said:

1. **Spot** each list entry the answer does not hold already: its similarity (``exp`` of the CTC score per piece,
   1 = on the projector's best path) and the frames of its best alignment.
2. **Find its words**: the projector's best-path words whose middle frame falls inside those frames, and the
   answer's words aligned to them (`word_map`: the most equal words, then the most letters in common; the LLM
   mostly copies the projector, so the alignment is close).
3. **Replace** those answer words by the entry, best similarity first, never two entries on the same words, and
   never more than the entry's words plus ``max_extra_words``; where the LLM dropped the words, insert the entry
   (one entry a gap), beside the projector word the frames overlap most, on the side they were heard. An entry
   the answer holds, and that stays, keeps its words from entries spotted less well.
4. **Move** (``move``, on by default): an entry the answer already holds, but on words whose projector frames lie
   outside the spotted ones, goes where it was spotted, and the projector's words go back where it stood ("Bojczuk
   is calling from Boz Motors" -> "Schot White is calling from Bojczuk Motors"). Two names the LLM swapped change
   places: the second takes the words the first gave back (with any beside them it was heard on). A move needs
   projector words heard at the spotted frames (it may go beside them, as in 3); into a gap where the projector
   heard nothing it never moves, nor does it leave words that hold another list entry.

    text, placed = place_spotted("I met brought out today.", ["Rotraut"], spotted, ListPlaceConfig(min_similarity=0.2))
    # -> "I met Rotraut today.", [("brought out", "Rotraut")]

``min_similarity`` is chosen on the dev split (`tune_min_similarity`), never on test: too low and distractors
that merely fit somewhere replace real words. By default it is a threshold *per list entry*: an entry needs
``min_similarity x len(list)`` (``by_list_length``), the prior that a given entry of a list of L was said falling
as 1/L. With only the utterance's own names every spotted entry goes in; among 100 distractors only good fits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from difflib import SequenceMatcher

from speechlm_lib.decoding.list_snap import _POSSESSIVE, _WORD, _key, _known, tune_by_wer

PLACE_GRID = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)  # min_similarity tried (0 = off): a
#   name the answer lacks fits the posteriors far below their best path (0.001-0.07 a piece on the ICT model)
PLACE_GRID_PER_ENTRY = (0.0, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 0.001, 0.002, 0.005, 0.01)  # the same with
#   ``by_list_length``: times the list's length, 1e-4 is 0.01 for a list of 100


@dataclass
class ListPlaceConfig:
    """Whether and how spotted list entries are placed in the answer."""

    min_similarity: float = 0.0  # place an entry the spotter finds at this similarity (0..1] or more; 0 = off
    max_extra_words: int = 2  # replace at most the entry's own words plus this many answer words
    by_list_length: bool = True  # the threshold is min_similarity x the list's length: among 100 entries a weak fit
    #   is more likely a distractor than when the list holds just the utterance's names (docs/stage4_findings.md)
    move: bool = True  # an entry the answer holds where the spotter did not hear it goes where it did, and the
    #   projector's words return to where it was ("Bojczuk is calling from Boz Motors" -> "Schot White is calling
    #   from Bojczuk Motors"); the same threshold

    def threshold(self, entries: list[str], length: int | None = None) -> float:
        """The similarity an entry of this list needs (0 = placing off); `length`: the list's length as the user
        gave it, when `entries` are what a filter kept of it (None: ``len(entries)``)."""
        return self.min_similarity * (max(1, length or len(entries)) if self.by_list_length else 1)

    @property
    def grid(self) -> tuple[float, ...]:
        """The thresholds `tune_min_similarity` tries for this rule."""
        return PLACE_GRID_PER_ENTRY if self.by_list_length else PLACE_GRID


def word_map(source: list[str], target: list[str]) -> list[tuple[int, int]]:
    """For each word of `source`, the range ``(lo, hi)`` of `target` words aligned to it (``lo == hi``: none, the
    insertion point). Inside a block of replaced words a source word gets the target words its letters overlap,
    both blocks laid end to end ("Plokrero Three" -> "Plokrebral": both to "Plokrebral")."""
    out: list[tuple[int, int]] = []
    for op, i1, i2, j1, j2 in _opcodes(source, target):
        if op == "insert":
            continue
        if op != "replace":
            out += [(j1 + k, j1 + k + 1) if op == "equal" else (j1, j1) for k in range(i2 - i1)]
            continue
        src, tgt = _edges(source[i1:i2]), _edges(target[j1:j2])
        for a, b in zip(src, src[1:]):
            hit = [j for j, (c, d) in enumerate(zip(tgt, tgt[1:])) if min(b, d) > max(a, c)]
            out.append((j1 + hit[0], j1 + hit[-1] + 1))
    return out


def _opcodes(source: list[str], target: list[str]) -> list[tuple]:
    """`difflib` opcodes whose equal words are those of the alignment with the most equal words and, among those,
    the most letters in common between the others, not the longest blocks first: "inberg Gfllin in Perberg" against
    "in PeronBourg in Gruflim" pairs the "in" before "Gruflim", where the other words fit best."""
    n, m = len(source), len(target)
    tie = 1.0 / (min(n, m) + 1)  # all unequal pairs together weigh less than one equal pair: the most equal words
    score = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n):
        for j in range(m):
            pair = 1.0 if source[i] == target[j] else SequenceMatcher(None, source[i], target[j]).ratio() * tie
            score[i + 1][j + 1] = max(score[i][j] + pair, score[i][j + 1], score[i + 1][j])
    pairs, i, j = [], n, m
    while i and j:
        if source[i - 1] == target[j - 1] and score[i][j] == score[i - 1][j - 1] + 1.0:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif score[i][j] == score[i - 1][j]:
            i -= 1
        elif score[i][j] == score[i][j - 1]:
            j -= 1
        else:
            i, j = i - 1, j - 1
    return _pairs_to_opcodes(pairs[::-1], n, m)


def _pairs_to_opcodes(pairs: list[tuple[int, int]], n: int, m: int) -> list[tuple]:
    """Opcodes (as `SequenceMatcher.get_opcodes`) from the equal pairs ``(i, j)``, increasing in both."""
    ops, i0, j0 = [], 0, 0
    for i, j in pairs + [(n, m)]:
        if i > i0 or j > j0:
            ops.append(("replace" if i > i0 and j > j0 else "delete" if i > i0 else "insert", i0, i, j0, j))
        if i < n:
            ops.append(("equal", i, i + 1, j, j + 1))
        i0, j0 = i + 1, j + 1
    return ops


def _edges(words: list[str]) -> list[float]:
    """Where each word begins and the last ends, as shares of the block's letters (each word one extra)."""
    sizes = [len(w) + 1 for w in words]
    total, edges = sum(sizes), [0.0]
    for n in sizes:
        edges.append(edges[-1] + n / total)
    return edges


def target_span(words: list[tuple[str, int, int]], first: int, last: int,
                mapped: list[tuple[int, int]], n_target: int) -> tuple[int, int]:
    """The answer words ``(lo, hi)`` for the frames ``first..last``: those aligned to the projector `words` (``(text,
    first frame, last frame)``) whose middle frame lies inside; none such: an insertion point, beside the word that
    overlaps the frames most (after it when the frames' middle is later than its own), else after the last word
    before ``first``."""
    inside = [k for k, (_, f0, f1) in enumerate(words) if first <= (f0 + f1) / 2 <= last]
    if inside:
        return min(mapped[k][0] for k in inside), max(mapped[k][1] for k in inside)
    over = [(min(f1, last) - max(f0, first), k) for k, (_, f0, f1) in enumerate(words) if f0 <= last and f1 >= first]
    if over:
        k = max(over)[1]
        at = mapped[k][1] if first + last >= words[k][1] + words[k][2] else mapped[k][0]
        return at, at
    before = [mapped[k][1] for k, (_, f0, f1) in enumerate(words) if f1 < first]
    at = before[-1] if before else (0 if words else n_target)
    return at, at


def holds(keys: list[str], entry: str) -> bool:
    """Whether the answer's word keys (`list_snap._key` of each word, possessive dropped) already hold `entry`."""
    return held_at(keys, entry) is not None


def held_at(keys: list[str], entry: str) -> tuple[int, int] | None:
    """The answer words ``(lo, hi)`` of the first place the word keys hold `entry`, or None."""
    return next(iter(held_all(keys, entry)), None)


def held_all(keys: list[str], entry: str) -> list[tuple[int, int]]:
    """The answer words ``(lo, hi)`` of every place the word keys hold `entry` (its words, or them run together)."""
    parts = [k for k in map(_key, entry.split()) if k]
    whole = "".join(parts)
    return [(i, min(len(keys), i + len(parts))) for i in range(len(keys))
            if keys[i:i + len(parts)] == parts or "".join(keys[i:i + len(parts)]) == whole]


def heard_there(pwords: list[tuple[str, int, int]], mapped: list[tuple[int, int]], lo: int, hi: int) -> list[int]:
    """The projector words (indices into `pwords`) aligned to the answer words ``lo..hi - 1`` (`word_map`)."""
    return [k for k, (a, b) in enumerate(mapped) if a < hi and b > lo]


def _kept(word: str, known: set[str] | None) -> bool:
    """Whether a word at the edge of a span stays: a lower-case word heard in training ("in", "tell"). A
    capitalised one may be the name misheard as another ("Mary" for "Zary"), so it is replaced."""
    return known is not None and word[:1].islower() and _known(word, known)


def place_spotted(hypothesis: str, entries: list[str] | None, spotted, cfg: ListPlaceConfig,
                  known: set[str] | None = None, list_length: int | None = None) -> tuple[str, list]:
    """`hypothesis` with the `entries` the spotter finds (similarity >= ``cfg.min_similarity``) placed where they
    were heard; `spotted`: the utterance's `list_filter.Spotted` (posteriors and spotter); `known`: the training
    vocabulary (`list_snap.training_vocabulary`): its lower-case words at either end of the span stay, and the entry
    goes between them ("tell Jedrzej", not "Jedrzej" for "tell"); `list_length`: the whole list's length where
    `entries` are a filtered part of it (the threshold's prior, `ListPlaceConfig.threshold`). With ``cfg.move`` an
    entry the answer holds where none of its frames were spotted moves there too. Returns the new text and
    ``[(words replaced, new words), ...]`` in the answer's order (words replaced "" for an insertion); unchanged when
    off or no list."""
    if cfg.min_similarity <= 0 or not entries or spotted is None:
        return hypothesis, []
    words = list(_WORD.finditer(hypothesis))
    keys = [_key(_POSSESSIVE.sub("", w.group())) for w in words]
    listed = [e for e in dict.fromkeys(entries) if _key(e)]
    if not listed:
        return hypothesis, []
    need = cfg.threshold(entries, list_length)
    return _apply(hypothesis, words, _edits(words, keys, listed, spotted, cfg, known, need))


def _edits(words, keys: list[str], todo: list[str], spotted, cfg: ListPlaceConfig, known, need: float) -> list:
    """The edits ``(lo, hi, new text)`` that place (or move) the spotted entries of `todo`, best similarity first,
    none two on the same answer words. An entry the answer holds that stays keeps its words from the entries
    after it. A moved entry gives its words back to the projector's; a later entry spotted on them takes them
    instead (two names the LLM swapped)."""
    found, pwords = spotted.spans(todo), spotted.words()
    mapped = word_map([_key(w) for w, _, _ in pwords], keys)
    targets, given_back, edits = set(), {}, []  # given_back: a moved entry's old words -> the index of their edit
    for (sim, f0, f1), entry in sorted(zip(found, todo), key=lambda x: -x[0][0]):
        at = held_at(keys, entry)
        at = None if at and set(range(*at)) & targets else at  # its words went to another entry: it is missing
        if at:
            movable = cfg.move and sim >= need and f0 >= 0
            back = _moved_back(pwords, mapped, at, todo, f0, f1) if movable else None
            if back is None:  # it stays, and its words are its own
                targets |= _occupied(*at)
                continue
        elif sim < need or f0 < 0:
            continue
        lo, hi = _target(words, keys, pwords, mapped, f0, f1, (entry, at) if at else None, known)
        span, source = _occupied(lo, hi), _occupied(*at) if at else set()
        into = next((r for r in given_back if r & span), None)
        if into is not None:  # the words a moved entry gave back: this entry is what was heard there
            lo, hi = min(lo, edits[given_back[into]][0]), max(hi, edits[given_back[into]][1])
            span = _occupied(lo, hi)
        busy = set().union(targets, *(r for r in given_back if r != into))
        heard = any(a <= f1 and b >= f0 for _, a, b in pwords)  # the projector heard words there
        if hi - lo > len(entry.split()) + cfg.max_extra_words or span & busy or source & busy or span & source \
                or (at and not heard):  # a move never goes where the projector heard nothing
            continue
        if into is None:
            edits.append((lo, hi, entry))
        else:
            edits[given_back.pop(into)] = (lo, hi, entry)
        targets |= span
        if at:
            given_back[frozenset(source)] = len(edits)
            edits.append((*at, back))
    return edits


def _target(words, keys: list[str], pwords, mapped, f0: int, f1: int, moving: tuple | None, known) -> tuple[int, int]:
    """The answer words ``(lo, hi)`` an entry spotted at frames ``f0..f1`` takes (`target_span`), less the words
    the answer keeps at either end (`_kept`); for an entry that moves (`moving`: it and the words it leaves), its
    twin there when the LLM wrote it there as well (it moves onto it, not beside it)."""
    lo, hi = target_span(pwords, f0, f1, mapped, len(words))
    while lo < hi and _kept(words[lo].group(), known):
        lo += 1  # the projector ran a heard word into the name ("inmouth"): keep the word
    while lo < hi and _kept(words[hi - 1].group(), known):
        hi -= 1
    twins = [t for t in held_all(keys, moving[0]) if t != moving[1] and lo - 1 <= t[0] and t[1] <= hi + 1] \
        if moving else []
    return twins[0] if twins else (lo, hi)


def _occupied(lo: int, hi: int) -> set:
    """What an edit of answer words ``lo..hi - 1`` occupies: those words and the gaps between them (``g - 0.5`` is
    the gap before word g); an insertion (``lo == hi``) occupies the gap before word lo."""
    return set(range(lo, hi)) | {g - 0.5 for g in range(lo + 1, hi)} if hi > lo else {lo - 0.5}


def _moved_back(pwords, mapped, at: tuple[int, int], entries: list[str], f0: int, f1: int) -> str | None:
    """For an entry the answer holds at words `at`: the projector's words heard there, to put back when the
    entry moves to frames ``f0..f1``; None when it stays (some of those words were heard inside the frames, or
    the LLM wrote the entry where the projector heard nothing, or the projector heard a list entry there)."""
    there = heard_there(pwords, mapped, *at)
    if not there or any(pwords[k][1] <= f1 and pwords[k][2] >= f0 for k in there):
        return None
    back = " ".join(pwords[k][0] for k in there if at[0] <= mapped[k][0] and mapped[k][1] <= at[1])
    keys = [_key(w) for w in back.split()]
    return None if any(holds(keys, e) for e in entries) else back


def _apply(hypothesis: str, words, edits: list) -> tuple[str, list]:
    """`edits` ``(lo, hi, text)`` applied to `hypothesis` (`words`: its word matches): ``text`` replaces words
    ``lo..hi - 1``, or goes in before word ``lo`` when ``lo == hi``. Returns the text and ``[(old, new), ...]``."""
    out, done = hypothesis, []
    for lo, hi, text in sorted(edits, reverse=True):  # right to left: earlier offsets stay valid
        if hi > lo and not text:  # a deletion: the words and the space after them (before them at the end)
            start, end = words[lo].start(), words[hi - 1].end()
            done.append((out[start:end], ""))
            cut = (start, words[hi].start()) if hi < len(words) else (words[lo - 1].end() if lo else start, end)
            out = out[:cut[0]] + out[cut[1]:]
        elif hi > lo:
            start, end = words[lo].start(), words[hi - 1].end()
            if out[start:end] == text:
                continue  # a name moved onto its own twin: nothing changes here
            done.append((out[start:end], text))
            out = out[:start] + text + out[end:]
        elif lo < len(words):  # before word lo
            done.append(("", text))
            out = out[:words[lo].start()] + text + " " + out[words[lo].start():]
        else:  # after the last word
            at = words[-1].end() if words else 0
            done.append(("", text))
            out = out[:at] + (" " if words else "") + text + out[at:]
    return out, done[::-1]


def place_all(hypotheses: list[str], lists: list, spotted: list, cfg: ListPlaceConfig,
              known: set[str] | None = None, lengths: list | None = None) -> tuple[list[str], int]:
    """`place_spotted` over a test set (``lists[i]``, ``spotted[i]``, ``lengths[i]`` for ``hypotheses[i]``; `lengths`:
    the whole lists' lengths where `lists` were filtered, None: their own): texts and placements."""
    out, count = [], 0
    for hyp, words, spot, n in zip(hypotheses, lists, spotted, lengths or [None] * len(hypotheses)):
        text, placed = place_spotted(hyp, words, spot, cfg, known, n)
        out.append(text)
        count += len(placed)
    return out, count


def tune_min_similarity(refs: list[str], hypotheses: list[str], lists: list, spotted: list, grid=None,
                        base: ListPlaceConfig | None = None, known: set[str] | None = None,
                        lengths: list | None = None) -> tuple[float, list[dict]]:
    """The ``min_similarity`` of `grid` (None: `base`'s rule's, ``ListPlaceConfig.grid``) with the lowest WER on
    these (dev) utterances, and each point's scores (parallel lists, which may pool several list conditions; ties
    go to the higher threshold, fewer placements); `known` and `lengths` as in `place_all`."""
    base = base or ListPlaceConfig()
    return tune_by_wer(refs, lists, grid or base.grid, "min_similarity", "placed",
                       lambda sim: place_all(hypotheses, lists, spotted, replace(base, min_similarity=sim), known,
                                             lengths))
