"""CTC keyword spotting: how well a list entry fits anywhere in the ``ctc`` projector's posteriors.

The list filter (`decoding.list_filter`) compares each entry with the projector's *best path*, a garbled spelling
that often loses an unseen name altogether. The posteriors hold more than their best path: a name the projector
half-heard still has its pieces among the runners-up. A keyword spotter scores each entry directly on them
(the CTC keyword-spotting idea behind SLAM-LLM's CTC-assisted contextual ASR):

1. **Spell** the entry in the projector's alphabet: the LLM tokenizer's pieces of ``" " + entry`` when the
   projector can emit all of them, and the spelling with the fewest pieces it can emit (`spellings`).
2. **Align it anywhere** (`spot_scores`): a CTC Viterbi over ``blank, piece 1, blank, ..., piece n, blank`` that
   may start and end at any frame, on log-posteriors normalised by each frame's best (so the frames before and
   after cost nothing, and a spelling that is the best path itself scores 0).
3. **Per piece**: the best alignment's score divided by the number of pieces, as a similarity
   ``exp(score / pieces)`` in (0, 1]: 1 = on the best path, 0.37 = one nat a piece below it.

    spotter = KeywordSpotter.for_model(model)            # the projector's alphabet, spellings cached
    scores = spotter.similarities(logp, ["Crolovre", "Zadoki"])   # logp: (frames, V + 1) of one utterance

Shapes: log-posteriors ``(frames, classes)`` for one utterance, class 0 the blank (`models.ctc_projector`).
"""
from __future__ import annotations

import math

import torch

MAX_PIECE_CHARS = 16  # the longest piece string the fewest-piece spelling tries


def spellings(entry: str, encode, pieces: dict[str, int], lookup: dict[int, int]) -> list[list[int]]:
    """Class sequences that spell ``" " + entry``: the tokenizer's own (`encode`: text -> LLM ids, kept when every
    id is a class of `lookup`, LLM id -> class) and the fewest-piece segmentation over `pieces` (piece text ->
    class), when it differs. Empty when the projector cannot spell the entry at all."""
    text, out = " " + entry.strip(), []
    ids = encode(text)
    if ids and all(i in lookup for i in ids):
        out.append([lookup[i] for i in ids])
    best: list[list[int] | None] = [[]] + [None] * len(text)
    for i in range(len(text)):
        if best[i] is None:
            continue
        for j in range(i + 1, min(len(text), i + MAX_PIECE_CHARS) + 1):
            c = pieces.get(text[i:j])
            if c is not None and (best[j] is None or len(best[i]) + 1 < len(best[j])):
                best[j] = best[i] + [c]
    if best[-1] and best[-1] not in out:
        out.append(best[-1])
    return out


def spot(logp: torch.Tensor, seqs: list[list[int]], blank: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best keyword-anywhere CTC alignment of each label sequence in `seqs` on one utterance's log-posteriors
    ``logp (frames, classes)``, each frame normalised by its best class. Returns ``(scores, starts, ends)``, each
    ``(len(seqs),)``: scores <= 0 (0: the sequence is on the best path; -inf: it does not fit in the frames) and
    the first frame of its first piece and the last of its last piece (frames before and after cost nothing)."""
    if not seqs:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    d = (logp - logp.max(-1, keepdim=True).values).float()  # (frames, classes), <= 0
    exts = [[blank] + [x for lab in labels for x in (lab, blank)] for labels in seqs]
    batch, states = len(exts), max(map(len, exts))
    ext = torch.full((batch, states), blank, dtype=torch.long)
    valid, skip_ok, final = (torch.zeros(batch, states, dtype=torch.bool) for _ in range(3))
    for b, e in enumerate(exts):
        ext[b, :len(e)] = torch.tensor(e)
        valid[b, :len(e)] = True
        final[b, len(e) - 2:len(e)] = True
        skip_ok[b, 2:len(e)] = torch.tensor([e[s] != blank and e[s] != e[s - 2] for s in range(2, len(e))],
                                            dtype=torch.bool)
    emit = d[:, ext].masked_fill(~valid, -math.inf)  # (frames, batch, states)
    pad, zero = torch.full((batch, 2), -math.inf), torch.zeros(batch, 2, dtype=torch.long)
    v, start = torch.full((batch, states), -math.inf), torch.zeros(batch, states, dtype=torch.long)
    best, first, last = torch.full((batch,), -math.inf), *torch.zeros(2, batch, dtype=torch.long)
    for t in range(d.shape[0]):
        skip = torch.cat([pad, v[:, :-2]], 1).masked_fill(~skip_ok, -math.inf)
        v, came = torch.stack([v, torch.cat([pad[:, :1], v[:, :-1]], 1), skip]).max(0)  # stay, step, skip
        start = torch.stack([start, torch.cat([zero[:, :1], start[:, :-1]], 1),
                             torch.cat([zero, start[:, :-2]], 1)]).gather(0, came[None])[0]
        fresh = v[:, 1] < 0  # start the first piece here, unless a path as good reached it already
        v[:, 0], start[:, 0] = 0.0, t + 1  # a leading blank here: the pieces start after it
        v[:, 1], start[:, 1] = torch.where(fresh, 0.0, v[:, 1]), torch.where(fresh, t, start[:, 1])
        v = v + emit[t]
        score, where = v.masked_fill(~final, -math.inf).max(1)
        better = score > best
        best = torch.where(better, score, best)
        first = torch.where(better, start.gather(1, where[:, None])[:, 0], first)
        last = torch.where(better, torch.full_like(last, t), last)
    return best, first, last


def spot_scores(logp: torch.Tensor, seqs: list[list[int]], blank: int = 0) -> torch.Tensor:
    """The scores of `spot` alone: ``(len(seqs),)``, <= 0."""
    return spot(logp, seqs, blank)[0]


def best_path_words(logp: torch.Tensor, piece_of: dict[int, str], blank: int = 0) -> list[tuple[str, int, int]]:
    """The words of the best path of ``logp (frames, classes)`` with the frames they span: ``[(word, first,
    last), ...]``; a piece whose text (`piece_of`: class -> text) starts with a space starts a word."""
    from speechlm_lib.decoding.ctc import path_segments

    words: list[list] = []
    for c, f0, f1 in path_segments(logp.argmax(-1).tolist(), blank):
        text = piece_of.get(c, "")
        if not words or text.startswith(" "):
            words.append([text.strip(), f0, f1])
        else:
            words[-1][0] += text
            words[-1][2] = f1
    return [(w, f0, f1) for w, f0, f1 in words if w]


class KeywordSpotter:
    """Scores list entries on a ``ctc`` projector's log-posteriors; spellings are computed once per entry."""

    def __init__(self, encode, vocab_ids: list[int], piece_text):
        """`encode`: text -> LLM ids; `vocab_ids`: the projector's LLM ids (class i + 1 = vocab_ids[i]);
        `piece_text`: LLM id -> its text."""
        self.encode = encode
        self.lookup = {int(t): i + 1 for i, t in enumerate(vocab_ids)}
        self.pieces: dict[str, int] = {}
        self.texts: dict[int, str] = {}  # class -> its piece's text
        for t, c in self.lookup.items():
            self.texts[c] = piece_text(t)
            self.pieces.setdefault(self.texts[c], c)
        self.pieces.pop("", None)
        self._spelt: dict[str, list[list[int]]] = {}

    @classmethod
    def for_model(cls, model) -> "KeywordSpotter":
        """The spotter of a `SpeechLM` whose projector is ``ctc`` (it says so otherwise)."""
        proj, tok = model.projector, model.tokenizer
        if not hasattr(proj, "vocab"):
            raise ValueError(f"keyword spotting needs the 'ctc' projector, not {type(proj).__name__}")
        return cls(lambda text: tok.encode(text, add_special_tokens=False), proj.vocab.tolist(),
                   lambda t: tok.decode([t]))

    def spell(self, entry: str) -> list[list[int]]:
        if entry not in self._spelt:
            self._spelt[entry] = spellings(entry, self.encode, self.pieces, self.lookup)
        return self._spelt[entry]

    def similarities(self, logp: torch.Tensor, entries: list[str]) -> list[float]:
        """``exp(best score / pieces)`` of each entry on ``logp (frames, classes)``, in (0, 1]; 0 for an entry
        the projector cannot spell or fit."""
        return [sim for sim, _, _ in self.spans(logp, entries)]

    def spans(self, logp: torch.Tensor, entries: list[str]) -> list[tuple[float, int, int]]:
        """Each entry's ``(similarity, first frame, last frame)`` on ``logp (frames, classes)``: the similarity as
        in `similarities`, the frames of its best spelling's alignment (``(0.0, -1, -1)`` where it does not fit)."""
        seqs, owner = [], []
        for k, entry in enumerate(entries):
            for seq in self.spell(entry):
                seqs.append(seq)
                owner.append(k)
        out = [(0.0, -1, -1)] * len(entries)
        scores, firsts, lasts = spot(logp, seqs)
        for k, seq, score, f0, f1 in zip(owner, seqs, scores.tolist(), firsts.tolist(), lasts.tolist()):
            sim = math.exp(score / len(seq)) if score > -math.inf else 0.0
            if sim > out[k][0]:
                out[k] = (sim, f0, f1)
        return out

    def words(self, logp: torch.Tensor) -> list[tuple[str, int, int]]:
        """The projector's best-path words with their frames (`best_path_words`)."""
        return best_path_words(logp, self.texts)


@torch.no_grad()
def projector_logprobs(model, utts, cache=None, batch_size: int = 32) -> list[torch.Tensor]:
    """The ``ctc`` projector's log-posteriors ``(frames, classes)`` of each of `utts`, in their order."""
    from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
    from speechlm_lib.decoding.ctc import encoder_batches

    out = {}
    ds = SpeechLMDataset(list(utts), model.encoder, model.prompts, cache=cache)
    for batch, states, lengths in encoder_batches(model, ds, batch_size):
        out.update(zip(batch["meta"]["id"], _logprobs(model.projector, states, lengths)))
    return [out[u.id] for u in utts]


@torch.no_grad()
def wave_logprobs(model, waves: list[torch.Tensor], batch_size: int = 8) -> list[torch.Tensor]:
    """`projector_logprobs` of 16 kHz waveforms ``(samples,)`` (``speechlm transcribe``'s pieces of audio)."""
    return [row for b in range(0, len(waves), batch_size)
            for row in _logprobs(model.projector, *model.encode_waves(waves[b: b + batch_size]))]


def _logprobs(proj, states: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """The ``ctc`` projector's log-posteriors ``(frames, classes)`` of each row of `states`, on the CPU."""
    logits, n = proj.logits(states.to(proj.table.dtype), lengths)
    return [row[:k] for row, k in zip(logits.float().log_softmax(-1).cpu(), n.tolist())]
