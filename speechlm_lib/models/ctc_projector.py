"""A projector that speaks the LLM's vocabulary: CTC-compressed soft tokens.

SLAM-ASR's linear projector learns only through the frozen LLM's loss, and its
"capability emergence" takes thousands of updates -- hours on a 2-core CPU. This
projector gives the alignment a direct, cheap signal first:

1. **Pre-alignment** (`CTCAlignment`): stack `stride` frames -> MLP -> logits over
   a set of LLM token ids (`vocab_ids`, from the training transcripts) plus a CTC
   blank, trained with CTC on the transcript's own LLM tokens. No LLM runs, so an
   update costs a fraction of an LLM update (the stage-1 idea, Fathullah et al.,
   with the LLM's tokens as the output alphabet).
2. **Soft tokens**: the LLM receives, per frame, the posterior-weighted average of
   those tokens' *own input embeddings* -- vectors it already knows how to read.
   With ``hard=True`` it receives the best token's embedding itself (straight-through:
   the LLM loss still reaches the logits as if soft). Uncertain mixtures lie between
   tokens, where a frozen LLM reads nonsense; exact tokens look like the text of the
   prompt's demonstrations (measured in `benchmarks/bench_speechlm.py`).
3. **Compression**: frames whose best label is blank are dropped and repeated
   labels merged (CTC compression, Wu et al. 2023 "On decoder-only architecture
   for speech-to-text and LLM integration"), so the LLM sees about one audio
   token per text token.

After pre-alignment the usual LLM loss (`alignment.train_projector`) trains the
same MLP end to end through the soft tokens. With ``hard=True`` that gradient is only
the straight-through estimate, and it is not a descent direction: on an H100, 1000
LLM-loss updates raised the training loss at lr 2e-4 and at 2e-5 alike
(docs/stage2_findings.md), so the presets keep that stage short, at a low rate, guarded by ``keep_best``.

Shapes: ``(batch, frames, enc_dim)`` -> logits ``(batch, ceil(frames/stride), V+1)``
-> embeddings ``(batch, tokens, llm_dim)`` with ``tokens <= ceil(frames/stride)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from speechlm_lib.models.projectors import PROJECTORS, Projector, TransformerProjector, stack_frames

BLANK = 0  # CTC blank index; LLM token vocab_ids[i] is class i + 1


def ctc_vocabulary(prompts, texts: Iterable[str]) -> list[int]:
    """Sorted LLM token ids of the answers to `texts` (end-of-turn id excluded): the classes a
    ``ctc`` projector may emit. `prompts` is the model's `PromptBuilder`."""
    return sorted({t for text in texts for t in prompts.target(text)[:-1]})


@dataclass
class StateMasking:
    """SpecAugment (Park et al. 2019) on the frozen encoder's states while the projector trains by CTC: spans of
    frames and bands of channels zeroed at random, so a small corpus is not learnt by heart (a projector fit to
    2,000 real utterances transcribed them perfectly and the held-out speakers at 49 % WER). Off by default."""

    time_masks: int = 0  # spans of frames zeroed in each utterance (0 = none)
    time_width: float = 0.05  # each span at most this share of the utterance's frames
    channel_masks: int = 0  # bands of state channels zeroed in each utterance (0 = none)
    channel_width: int = 32  # each band at most this many channels

    def apply(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, dim)`` states, ``(batch,)`` lengths -> the same, masked (a copy; unchanged if off)."""
        if not (self.time_masks or self.channel_masks):
            return states
        batch, frames, dim = states.shape
        keep = torch.ones(batch, frames, dim, dtype=torch.bool, device=states.device)
        spans = [(self.time_masks, (lengths.float() * self.time_width).long().clamp(min=1), lengths, 1),
                 (self.channel_masks, torch.full_like(lengths, self.channel_width), torch.full_like(lengths, dim), 2)]
        for count, widths, extents, axis in spans:
            for _ in range(count):
                width = torch.minimum((torch.rand(batch, device=states.device) * (widths + 1).float()).long(),
                                      extents // 2)  # never more than half the utterance or the channels
                start = (torch.rand(batch, device=states.device) * (extents - width + 1).clamp(min=1).float()).long()
                pos = torch.arange(states.shape[axis], device=states.device)
                hit = (pos >= start[:, None]) & (pos < (start + width)[:, None])  # (batch, frames or dim)
                keep &= ~(hit[:, :, None] if axis == 1 else hit[:, None, :])
        return states * keep.to(states.dtype)


@PROJECTORS.register("ctc")
class CTCProjector(Projector):
    """Stack `stride` frames -> Linear -> ReLU -> Dropout -> (`context` Transformer layers over
    the tokens: a residual stride-1 `TransformerProjector`) -> Linear -> CTC posteriors over
    `vocab_ids` + blank -> soft (or, with `hard`, exact) LLM embeddings, blank frames dropped
    (see the module docstring)."""

    name = "ctc"
    needs_vocabulary = True  # `alignment.build_speechlm` fills `vocab_ids` from the training texts

    def __init__(self, in_dim: int, out_dim: int, stride: int = 5, hidden: int = 1024,
                 vocab_ids: list[int] | None = None, dropout: float = 0.1, compress: bool = True,
                 hard: bool = False, context: int = 0, members: int = 1):
        if not vocab_ids:
            raise ValueError("the ctc projector needs vocab_ids: the LLM token ids it may emit "
                             "(ctc_projector.ctc_vocabulary(prompts, training texts))")
        if members < 1:
            raise ValueError(f"a ctc projector needs at least one member, got members={members}")
        super().__init__(in_dim, out_dim, stride, hidden=hidden, vocab_ids=list(vocab_ids), dropout=dropout,
                         compress=compress, hard=hard, context=context, members=members)
        self.compress, self.hard = compress, hard
        head = _Head(in_dim * stride, hidden, len(vocab_ids) + 1, dropout, context)
        self.hidden, self.context, self.classify = head.hidden, head.context, head.classify  # member 0
        # members: independent heads (own initialisation, own state masking in training), their log-posteriors
        # averaged -- an ensemble of projectors at the cost of one encoder pass (1 = a single projector)
        self.others = nn.ModuleList(_Head(in_dim * stride, hidden, len(vocab_ids) + 1, dropout, context)
                                    for _ in range(members - 1))
        # derived, so not saved: the ids are in the settings, the embeddings are the LLM's (`bind`)
        self.register_buffer("vocab", torch.tensor(vocab_ids, dtype=torch.long), persistent=False)
        self.register_buffer("table", torch.zeros(len(vocab_ids), out_dim), persistent=False)
        # a training regime, not a setting of the weights: in train mode with hard tokens, draw each token's
        # label from softmax(logits / T) instead of taking the best, so an LLM trained on top meets the kind
        # of errors the projector makes on unseen voices (stage 3's `exposure`); 0 = always the best path
        self.sample_temperature = 0.0
        self.state_masking: StateMasking | None = None  # likewise: mask the input states in train mode (exposure)

    def bind(self, llm) -> None:
        """Copy the LLM's input embeddings of `vocab_ids` into ``table (V, llm_dim)``."""
        with torch.no_grad():
            weight = llm.get_input_embeddings().weight
            self.table.copy_(weight[self.vocab.to(weight.device)].to(self.table))

    @torch.no_grad()
    def extend_vocabulary(self, token_ids: Iterable[int], llm) -> int:
        """Let the projector emit LLM token ids it does not know yet (a new corpus's word pieces).

        New ids are appended as classes after the old ones, so every trained class keeps its index and
        weights; a new class starts with zero weights and the mean bias of the old tokens (rare until
        trained). The settings grow too (`save_pretrained` round-trips). Returns how many were added."""
        known = set(self.vocab.tolist())
        new = sorted({int(t) for t in token_ids} - known)
        if not new:
            return 0
        self.classify = _grown(self.classify, len(new))
        for head in self.others:
            head.classify = _grown(head.classify, len(new))
        ids = self.vocab.tolist() + new
        self.settings["vocab_ids"] = ids
        self.vocab = torch.tensor(ids, dtype=torch.long, device=self.vocab.device)
        self.table = torch.zeros(len(ids), self.table.shape[1], dtype=self.table.dtype, device=self.table.device)
        self.bind(llm)
        return len(new)

    def logits(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, frames, in_dim)`` -> CTC logits ``(batch, ceil(frames/stride), V + 1)``, lengths."""
        return self._run(x, lengths)[1:]

    @property
    def members(self) -> list[nn.Module]:
        """The heads whose log-posteriors are averaged: this module's own layers (member 0, where old checkpoints
        keep them), then `others`. Each has ``hidden``, ``context`` and ``classify`` (`_head_logits`)."""
        return [self, *self.others]

    def member_logits(self, x: torch.Tensor, lengths: torch.Tensor, member: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One member's logits ``(batch, ceil(frames/stride), V + 1)`` and lengths (each trains by its own CTC)."""
        x, lengths = stack_frames(x, lengths, self.stride)
        return _head_logits(self.members[member], x, lengths), lengths

    def _run(self, x, lengths):
        """Stacked input ``(batch, tokens, in_dim * stride)``, logits ``(batch, tokens, V + 1)`` (with several
        members, their mean log-softmax), token lengths."""
        if self.training and self.state_masking is not None:
            x = self.state_masking.apply(x, lengths)
        x, lengths = stack_frames(x, lengths, self.stride)
        if not self.others:
            return x, _head_logits(self, x, lengths), lengths
        logp = torch.stack([_head_logits(h, x, lengths).float().log_softmax(-1) for h in self.members]).mean(0)
        return x, logp.to(x.dtype), lengths

    @torch.no_grad()
    def guess_tokens(self, x: torch.Tensor, lengths: torch.Tensor, temperature: float = 0.0) -> list[list[int]]:
        """Best-path LLM token ids per row (repeats merged, blanks dropped): the projector alone as ASR.
        With `temperature` > 0 each label is drawn from softmax(logits / temperature) instead (what the
        LLM is shown in training under stage 3's exposure)."""
        _, logits, n = self._run(x.to(self.table.dtype), lengths)
        if temperature > 0:
            probs = (logits.float() / temperature).softmax(-1)
            labels = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
            return self._best_paths(labels, n, labels=True)
        return self._best_paths(logits, n)

    def _best_paths(self, logits: torch.Tensor, lengths: torch.Tensor, labels: bool = False) -> list[list[int]]:
        out = []
        for row, length in zip(logits if labels else logits.detach().argmax(-1), lengths.tolist()):
            row = torch.unique_consecutive(row[:length])
            out.append(self.vocab[row[row != BLANK] - 1].tolist())
        return out

    def project_and_guess(self, x, lengths):
        """`forward` and `guess_tokens` from one run (the draft of `speculative` decoding)."""
        _, logits, n = self._run(x, lengths)
        return (*self._embed(logits, n, x.dtype), self._best_paths(logits, n))

    def forward(self, x, lengths):
        """``(batch, frames, in_dim)`` -> soft tokens ``(batch, tokens, out_dim)``, token lengths.

        A soft token is the posterior-weighted mix of the candidate tokens' LLM embeddings
        (given not blank), so it stays inside their convex hull."""
        _, logits, lengths = self._run(x, lengths)
        return self._embed(logits, lengths, x.dtype)

    def _embed(self, logits: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype):
        """Logits ``(batch, tokens, V + 1)`` -> (compressed) soft or hard tokens, their lengths."""
        p = logits.float().softmax(-1)
        q = p[..., 1:] / (1 - p[..., :1]).clamp(min=1e-4)  # tokens given not blank
        labels = self._labels(logits)
        if self.hard:  # the chosen token's own embedding; gradients pass as if soft (straight-through)
            pick = q.argmax(-1) if labels is None else (labels - 1).clamp(min=0)
            q = nn.functional.one_hot(pick, q.shape[-1]).to(q) + q - q.detach()
        soft = q @ self.table.float()
        if not self.compress:
            return soft.to(dtype), lengths
        labels = logits.argmax(-1) if labels is None else labels
        rows = [_compress(soft[i, :n], labels[i, :n], p[i, :n, BLANK]) for i, n in enumerate(lengths.tolist())]
        out = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        return out.to(dtype), torch.tensor([len(r) for r in rows], device=logits.device)

    def _labels(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Sampled labels ``(batch, tokens)`` (blank = 0) in training with `sample_temperature`, else None."""
        if not (self.training and self.hard and self.sample_temperature > 0):
            return None
        probs = (logits.detach().float() / self.sample_temperature).softmax(-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])


class _Head(nn.Module):
    """The layers of one member of a ``ctc`` projector: Linear -> ReLU -> Dropout -> (`context` Transformer
    layers, residual) -> Linear to the CTC classes (run by `_head_logits`)."""

    def __init__(self, in_dim: int, hidden: int, classes: int, dropout: float, context: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        # context: a residual stride-1 `transformer` over the tokens -- the MLP alone classifies each
        # window of `stride` frames by itself, and a word piece often spans more audio than that
        self.context = (TransformerProjector(hidden, hidden, stride=1, d_model=256, layers=context, dropout=dropout)
                        if context else None)
        self.classify = nn.Linear(hidden, classes)


def _head_logits(head: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A member's logits: ``(batch, tokens, in_dim * stride)`` stacked frames -> ``(batch, tokens, V + 1)``."""
    h = head.hidden(x)
    if head.context is not None:
        h = h + head.context(h, lengths)[0]
    return head.classify(h)


def _grown(old: nn.Linear, extra: int) -> nn.Linear:
    """`old` with `extra` new output rows: zero weights (each row's own targets pull it apart from the rest) and
    the mean bias of the old tokens, so a new class starts rare; old rows keep their weights."""
    grown = nn.Linear(old.in_features, old.out_features + extra).to(old.weight)
    grown.weight[: old.out_features] = old.weight
    grown.weight[old.out_features:] = 0.0
    grown.bias[: old.out_features] = old.bias
    grown.bias[old.out_features:] = old.bias[1:].mean()
    return grown


def _compress(soft: torch.Tensor, best: torch.Tensor, blank_p: torch.Tensor) -> torch.Tensor:
    """One row ``(tokens, dim)``: drop blank frames, average runs of the same best label.

    A row that is all blank keeps its least-blank frame (the LLM always gets audio)."""
    keep = best != BLANK
    if not bool(keep.any()):
        return soft[blank_p.argmin()].unsqueeze(0)
    prev = torch.cat([best.new_full((1,), BLANK), best[:-1]])
    segment = torch.cumsum((keep & (best != prev)).long(), 0) - 1  # run index of each kept frame
    seg, frames = segment[keep], soft[keep]
    total = frames.new_zeros((int(seg.max()) + 1, soft.shape[1])).index_add(0, seg, frames)
    count = torch.bincount(seg).unsqueeze(1).to(total)
    return total / count


class CTCAlignment(nn.Module):
    """Pre-alignment objective for a `SpeechLM` with a ``ctc`` projector: CTC loss of the
    projector's logits against the target's LLM tokens (mapped to projector classes).

    Takes the same batches as the `SpeechLM` (cached ``states`` or ``features``) and
    returns ``{"loss", "n_tokens"}``; only the projector trains (its states masked by `masking` in training
    mode). Target tokens outside `vocab_ids` (and the end-of-turn id) are left out of the CTC labels. With
    `piece_dropout` (`models.piece_dropout.PieceDropout`), training targets are re-split into smaller pieces.
    """

    def __init__(self, speechlm, masking: StateMasking | None = None, piece_dropout=None):
        super().__init__()
        self.masking = masking or StateMasking()  # applied to the states in training mode only
        self.piece_dropout = piece_dropout  # likewise: BPE-dropout on the target pieces (None = off)
        proj = speechlm.projector
        if not isinstance(proj, CTCProjector):
            raise TypeError(f"CTC pre-alignment needs the 'ctc' projector, not {speechlm.projector_name!r}")
        self.speechlm = speechlm
        size = max(int(proj.vocab.max()), speechlm.prompts.end_id, len(speechlm.prompts.tokenizer)) + 1
        lookup = torch.zeros(size, dtype=torch.long, device=proj.vocab.device)  # LLM id -> class (0 = none)
        lookup[proj.vocab] = torch.arange(1, len(proj.vocab) + 1, device=lookup.device)
        self.register_buffer("lookup", lookup)

    def labels(self, target_ids: torch.Tensor, target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated CTC labels ``(sum of lengths,)`` and per-row lengths ``(batch,)``."""
        rows = [target_ids[i, :n] for i, n in enumerate(target_lengths.tolist())]
        if self.training and self.piece_dropout is not None:
            rows = [torch.tensor(self.piece_dropout(r.tolist()), dtype=torch.long, device=r.device) for r in rows]
        rows = [self.lookup[r] for r in rows]
        rows = [r[r > 0] for r in rows]
        return torch.cat(rows), torch.tensor([len(r) for r in rows], device=target_ids.device)

    def forward(self, target_ids, target_lengths, states=None, state_lengths=None, features=None,
                feature_lengths=None, **_) -> dict:
        if states is None:
            states, state_lengths = self.speechlm.encode(features, feature_lengths)
        proj = self.speechlm.projector
        labels, label_lengths = self.labels(target_ids, target_lengths)
        losses = []
        for member in range(len(proj.members)):  # each member its own CTC loss, on its own masking of the states
            x = self.masking.apply(states, state_lengths) if self.training else states
            logits, n = proj.member_logits(x.to(proj.table.dtype), state_lengths, member)
            log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (frames, batch, classes)
            losses.append(nn.functional.ctc_loss(log_probs, labels, n, label_lengths, blank=BLANK, zero_infinity=True))
        return {"loss": torch.stack(losses).mean(), "n_tokens": int(label_lengths.sum())}

    @torch.no_grad()
    def greedy(self, states: torch.Tensor, state_lengths: torch.Tensor) -> list[list[int]]:
        """Best-path LLM token ids per row (repeats merged, blanks dropped): the projector alone as ASR."""
        return self.speechlm.projector.guess_tokens(states, state_lengths)
