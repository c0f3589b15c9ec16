"""Prompts for the speech-LLM: where the audio goes and which tokens are learned.

A training example is four token/embedding segments, in this order::

    prefix ids | audio embeddings | suffix ids | target ids + end id
    \\_________ the prompt _________/            \\__ the answer (loss) __/

With a chat template (SmolLM2-Instruct, Llama-3, Qwen, ...) the prompt is the
template rendered for one user turn whose content is
``"<audio> Transcribe the audio."`` (the audio placeholder, then the
instruction) plus the generation prompt that opens the assistant turn; the
rendered text is split at the placeholder into `prefix` and `suffix`. The
target is the transcript followed by the token that closes an assistant turn
(``<|im_end|>`` for SmolLM2), so the model learns when to stop.

An LLM **without** a chat template gets the plain format::

    <audio> Transcribe the audio.
    Transcript: <target><eos>

(prefix = BOS if the tokenizer adds one, suffix = `` Transcribe the audio.\\nTranscript:``).

**Demonstrations** (`PromptConfig.examples`, a few training transcripts) come
first as finished turns: the user turn holds the instruction with the example's
*text* where the audio goes, the assistant turn repeats that text. A frozen
LLM asked to "transcribe" a string of near-token embeddings chats about it
instead; with a few demonstrations it copies (measured in
`benchmarks/bench_copy_ceiling.py`). They are part of the shared prefix, so
`SpeechLM.prefix_cache` runs them once, not once a row.

The instruction is a parameter of `PromptBuilder.prompt`, so later stages
add keyword context ("Names that may occur: Zbigniew, ...") or ask for a translation by
passing a different instruction; nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

AUDIO_PLACEHOLDER = "<audio>"  # marks where the audio embeddings are spliced in
PLAIN_ANSWER_CUE = "Transcript:"  # the plain format's answer cue (no chat template)


@dataclass
class PromptConfig:
    """How prompts are built (stage 3 changes `instruction` per example)."""

    instruction: str = "Transcribe the audio."  # default task instruction (user turn)
    system: str | None = None  # system message; None = the chat template's own default
    audio_first: bool = True  # audio placeholder before (True) or after the instruction
    use_chat_template: bool = True  # False forces the plain format even if a template exists
    examples: list[str] = field(default_factory=list)  # demonstration transcripts shown as done turns first


def pick_examples(texts, n: int) -> list[str]:
    """`n` demonstration transcripts spread evenly over `texts` (deterministic; distinct)."""
    return example_sets(texts, n, 1)[0]


def example_sets(texts, n: int, k: int) -> list[list[str]]:
    """`k` candidate demonstration sets of `n` transcripts each, spread evenly over `texts` and
    disjoint where `texts` allow (deterministic; the first is `pick_examples`)."""
    pool = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if n <= 0 or not pool:
        return [[] for _ in range(max(1, k))]
    step = max(1, len(pool) // n)
    offsets = sorted({step * j // max(1, k) for j in range(max(1, k))})
    return [pool[o::step][:n] for o in offsets]


@dataclass
class Prompt:
    """Token ids around the audio: ``prefix + <audio> + suffix`` (1-D lists of ints)."""

    prefix: list[int]
    suffix: list[int]


class PromptBuilder:
    """Turns instructions and transcripts into token ids for one tokenizer."""

    def __init__(self, tokenizer, config: PromptConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config or PromptConfig()
        self.chat = bool(self.config.use_chat_template and getattr(tokenizer, "chat_template", None))
        self.end_id = self._find_end_id()
        self._cache: dict[str, Prompt] = {}

    def set_examples(self, examples: list[str]) -> None:
        """Show these demonstrations from now on (everyone holding this builder sees the change)."""
        self.config = replace(self.config, examples=list(examples))
        self._cache.clear()

    # -- prompt ---------------------------------------------------------------
    def user_content(self, instruction: str, audio: str = AUDIO_PLACEHOLDER) -> str:
        """The user turn's text with `audio` (the placeholder, or a demonstration's text) in it."""
        if self.config.audio_first:
            return f"{audio} {instruction}"
        return f"{instruction} {audio}"

    def render(self, instruction: str | None = None) -> str:
        """The full prompt text (placeholder included), as the LLM would see it."""
        instruction = self.config.instruction if instruction is None else instruction
        shots = [ex.strip() for ex in self.config.examples]
        if not self.chat:
            done = "".join(f"{self.user_content(instruction, ex)}\n{PLAIN_ANSWER_CUE} {ex}\n\n" for ex in shots)
            return f"{done}{self.user_content(instruction)}\n{PLAIN_ANSWER_CUE}"
        messages = [{"role": "system", "content": self.config.system}] if self.config.system is not None else []
        for ex in shots:
            messages += [{"role": "user", "content": self.user_content(instruction, ex)},
                         {"role": "assistant", "content": ex}]
        messages.append({"role": "user", "content": self.user_content(instruction)})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt(self, instruction: str | None = None) -> Prompt:
        """Prefix and suffix ids for `instruction` (default: the configured one); cached."""
        key = self.config.instruction if instruction is None else instruction
        if key not in self._cache:
            text = self.render(key)
            if text.count(AUDIO_PLACEHOLDER) != 1:
                raise ValueError(f"prompt must hold exactly one {AUDIO_PLACEHOLDER!r}: {text!r}")
            before, after = text.split(AUDIO_PLACEHOLDER)
            prefix = self._encode(before)
            if not self.chat and self._adds_bos():
                prefix = [self.tokenizer.bos_token_id] + prefix
            self._cache[key] = Prompt(prefix=prefix, suffix=self._encode(after))
        return self._cache[key]

    # -- target ---------------------------------------------------------------
    def target(self, text: str) -> list[int]:
        """Ids of the answer `text` followed by the end-of-turn id (what the loss covers)."""
        text = text.strip()
        if not self.chat:
            text = " " + text  # "Transcript: hello" -- the cue ends without a space
        return self._encode(text) + [self.end_id]

    def decode(self, ids) -> str:
        """Text of generated ids, special tokens (end, pad) dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end generation: the end-of-turn id and the tokenizer's EOS."""
        ids = [self.end_id]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def stops(self, newline: bool = True) -> list[int]:
        """`stop_ids`, plus the lone-newline id when `newline` (transcripts are one line)."""
        return self.stop_ids + ([self.newline_id] if newline and self.newline_id is not None else [])

    @cached_property
    def newline_id(self) -> int | None:
        """The id of a lone newline if it is one token (transcripts are one line), else None."""
        ids = self._encode("\n")
        return int(ids[0]) if len(ids) == 1 else None

    @property
    def pad_id(self) -> int:
        """The id used to pad token rows (pad, else EOS, else the end id)."""
        for tid in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if tid is not None:
                return int(tid)
        return int(self.end_id)

    def explain(self, text: str, n_audio: int, instruction: str | None = None) -> list[tuple[str, str, bool]]:
        """The sequence the LLM sees for one example, as (segment, text, in the loss) rows."""
        p, target = self.prompt(instruction), self.target(text)
        return [("prefix", self.tokenizer.decode(p.prefix), False),
                ("audio", f"[{n_audio} projected audio embeddings]", False),
                ("suffix", self.tokenizer.decode(p.suffix), False),
                ("target", self.tokenizer.decode(target[:-1]), True),
                ("end", self.tokenizer.decode(target[-1:]), True)]

    # -- helpers --------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _adds_bos(self) -> bool:
        """Whether the tokenizer itself starts plain text with BOS (Llama-2 style)."""
        bos = self.tokenizer.bos_token_id
        with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bos is not None and len(with_special) > 0 and with_special[0] == bos

    def _find_end_id(self) -> int:
        """The token that closes an assistant turn (from the template), else EOS."""
        eos = self.tokenizer.eos_token_id
        if self.chat:
            marker = "Xq7Zr"  # a string no template contains
            messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            tail = text.split(marker, 1)[1].strip() if marker in text else ""
            ids = self._encode(tail)
            if ids:
                return int(ids[0])
        if eos is None:
            raise ValueError("tokenizer has neither a chat template end token nor an EOS token")
        return int(eos)
