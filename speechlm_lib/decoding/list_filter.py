"""CTC-assisted filtering of a biasing list (SLAM-LLM's contextual ASR): before a list reaches the prompt, keep
the few entries that sound like something the projector heard.

A list of 100 names costs about 400 prompt tokens a row and buries the one name that was said among 100 that
were not. The ``ctc`` projector's own best path is a garbled but close spelling of what was said ("mateus" for
"Matthews"), and it costs one small network on states the encoder computed anyway. Each list entry is scored by
its best character similarity to any run of about as many words in that transcript (`difflib.SequenceMatcher`
ratio, after the shared normaliser); the `keep` best scoring at least `min_score` stay, in the list's order.
``match`` chooses what is compared (`MATCH`): the letters (``spelling``), or eSpeak NG's pronunciation of each
word (``sound``: "Matthews" -> ``maTju:z``, "mateus" -> ``matI2@s``), which does not care how a sound is spelt.
``ctc`` reads no transcript: it scores each entry on the projector's posteriors (`decoding.keyword_spot`, a CTC
keyword spotter), so the hypothesis handed over is a `Spotted` utterance instead of a text.

    hyps = projector_texts(model, utts, cache)                  # one best-path text per utterance
    lists = [filter_list(words, hyp, ListFilterConfig(keep=5)) for words, hyp in zip(lists, hyps)]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from difflib import SequenceMatcher

from speechlm_lib.data.text import normalize
from speechlm_lib.decoding.ctc import projector_transcripts


def _sound(word: str) -> str:
    """One word's eSpeak phonemes without stress and allophone marks (a "sounds like" key)."""
    from speechlm_lib.data.tts import phonemes

    return "".join(c for c in phonemes(word) if c not in "',#;% ") or word


MATCH = {"spelling": lambda word: word, "sound": _sound}  # normalised word -> what is compared


@dataclass
class ListFilterConfig:
    """Which list entries reach the prompt."""

    keep: int = 0  # at most this many entries a list, the most similar to the projector's transcript (0 = all)
    min_score: float = 0.5  # drop an entry whose best similarity (0..1) to the transcript is below this
    match: str = "spelling"  # compare letters ("spelling") or eSpeak pronunciations ("sound") with the projector's
    #   transcript (MATCH), or spot each entry in the projector's posteriors ("ctc": decoding.keyword_spot; its
    #   similarity is exp(score per piece), so a min_score of 0.5 is strict there: 0.02 suits it)


def similarity(entry: str, words: list[str], match: str = "spelling") -> float:
    """Best `SequenceMatcher` ratio of `entry` (normalised, each word through ``MATCH[match]``) against any run
    of ``len(entry words) - 1 .. + 1`` consecutive `words` (already through it); 0 for an empty transcript."""
    target = " ".join(MATCH[match](w) for w in normalize(entry).split())
    k, best = max(1, len(target.split())), 0.0
    matcher = SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    for size in sorted({max(1, k - 1), k, k + 1}):
        for i in range(max(1, len(words) - size + 1)):
            matcher.set_seq1(" ".join(words[i:i + size]))
            if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:
                best = max(best, matcher.ratio())
    return best


@dataclass
class Spotted:
    """One utterance as the ``ctc`` match sees it: the projector's log-posteriors ``(frames, classes)`` and the
    spotter that scores entries on them (`decoding.keyword_spot`)."""

    logp: object
    spotter: object
    _spans: dict = field(default_factory=dict, repr=False, compare=False)  # entry -> its spotted span, once
    _words: list | None = field(default=None, repr=False, compare=False)

    def similarities(self, entries: list[str]) -> list[float]:
        return [sim for sim, _, _ in self.spans(entries)]

    def spans(self, entries: list[str]) -> list[tuple[float, int, int]]:
        """Each entry's ``(similarity, first frame, last frame)`` (`KeywordSpotter.spans`), each spotted once."""
        todo = [e for e in dict.fromkeys(entries) if e not in self._spans]
        self._spans.update(zip(todo, self.spotter.spans(self.logp, todo)))
        return [self._spans[e] for e in entries]

    def words(self) -> list[tuple[str, int, int]]:
        """The projector's best-path words with their frames (`keyword_spot.best_path_words`)."""
        if self._words is None:
            self._words = self.spotter.words(self.logp)
        return self._words


def filter_list(entries: list[str] | None, hypothesis: "str | Spotted", cfg: ListFilterConfig) -> list[str] | None:
    """`entries` cut to the ``cfg.keep`` most similar to `hypothesis` (scores >= ``cfg.min_score``), in their
    own order; unchanged when ``cfg.keep`` is 0 or the list is empty or None. `hypothesis`: the projector's
    transcript, or for ``match="ctc"`` a `Spotted` utterance."""
    if not entries or cfg.keep <= 0:
        return entries
    if cfg.match not in (*MATCH, "ctc"):
        raise ValueError(f"unknown list-filter match {cfg.match!r}; known: {', '.join(MATCH)}, ctc")
    if (cfg.match == "ctc") != isinstance(hypothesis, Spotted):
        raise ValueError(f"list-filter match {cfg.match!r} needs "
                         f"{'a Spotted utterance' if cfg.match == 'ctc' else 'the projector transcript'}, "
                         f"got {type(hypothesis).__name__}")
    if cfg.match == "ctc":
        sims = hypothesis.similarities(list(entries))
    else:
        words = [MATCH[cfg.match](w) for w in normalize(hypothesis).split()]
        sims = [similarity(e, words, cfg.match) for e in entries]
    scored = sorted(((s, -i) for i, s in enumerate(sims)), reverse=True)[: cfg.keep]
    chosen = {-neg for score, neg in scored if score >= cfg.min_score}
    return [e for i, e in enumerate(entries) if i in chosen]


def projector_texts(model, utts, cache=None, batch_size: int = 32) -> list[str]:
    """The ``ctc`` projector's best-path transcript of each of `utts` (in their order): what the LLM will be
    shown, read as text. `cache`: the encoder's feature cache (states computed once). Needs the ``ctc``
    projector (`decoding.ctc.projector_transcripts` says so otherwise)."""
    from speechlm_lib.data.speechlm_dataset import SpeechLMDataset

    ds = SpeechLMDataset(list(utts), model.encoder, model.prompts, cache=cache)
    out = projector_transcripts(model, ds, batch_size=batch_size)
    texts = dict(zip(out["ids"], out["hyps"]))
    return [texts[u.id] for u in utts]


def projector_spotted(model, utts, cache=None) -> list[Spotted]:
    """What ``match="ctc"`` filters against: each of `utts` as a `Spotted` utterance (one projector pass)."""
    from speechlm_lib.decoding.keyword_spot import KeywordSpotter, projector_logprobs

    spotter = KeywordSpotter.for_model(model)
    return [Spotted(logp, spotter) for logp in projector_logprobs(model, utts, cache)]


def spotted_waves(model, waves: list, batch_size: int = 8) -> list[Spotted]:
    """`projector_spotted` of waves ``(samples,)`` at 16 kHz (``speechlm transcribe``'s pieces of audio files)."""
    from speechlm_lib.decoding.keyword_spot import KeywordSpotter, wave_logprobs

    spotter = KeywordSpotter.for_model(model)
    return [Spotted(logp, spotter) for logp in wave_logprobs(model, waves, batch_size)]
