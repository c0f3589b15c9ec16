"""An interactive explorer of decoded test sets (ipywidgets), whose callbacks also run without a browser.

    ex = Explorer({"synthetic": utts}, {"stage 2": lambda: SYSTEMS.build("speechlm", folder=...)})
    ex.widget                         # in a notebook: the controls below

Choose a test set and filter it (speaker, errors only, keyword misses only), pick an utterance, listen, read
the reference and hypothesis aligned (substitutions amber, deletions red, insertions blue), switch the model,
edit the keyword list and re-decode the utterance live. Every control's callback is a plain method
(`on_set`, `on_model`, `on_filter`, `on_pick`, `on_redecode`), observed on its widget: a test sets
``ex.set_box.value`` or calls ``ex.redecode_button.click()`` and reads ``ex.align_html.value``.
A set is decoded whole the first time a model meets it (cached per model and set; `records` seeds that cache
with sets already decoded, so nothing is decoded until a control asks for it); one model is held at a time.
Hypotheses are shown through `course.clean` (a mishearing model can write anything).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from speechlm_lib.course import clean
from speechlm_lib.data.records import Utterance
from speechlm_lib.evaluation.records import UttRecord, alignment_html
from speechlm_lib.evaluation.run import evaluate

ALL = "(all speakers)"


class Explorer:
    """See the module docstring. `systems` maps a label to a builder of a `systems.System` (called lazily)."""

    def __init__(self, test_sets: dict[str, list[Utterance]], systems: dict[str, Callable], keywords=None,
                 records: dict[tuple[str, str], list[UttRecord]] | None = None):
        import ipywidgets as w

        if not test_sets or not systems:
            raise ValueError("the explorer needs at least one test set and one system")
        self.test_sets, self.factories = test_sets, systems
        self._held: tuple[str, object] | None = None
        self._records: dict[tuple[str, str], list[UttRecord]] = dict(records or {})  # (test set, model) ->
        self.set_box = w.Dropdown(options=list(test_sets), description="test set")
        self.model_box = w.Dropdown(options=list(systems), description="model")
        self.speaker_box = w.Dropdown(options=[ALL], description="speaker")
        self.errors_box = w.Checkbox(value=False, description="errors only")
        self.misses_box = w.Checkbox(value=False, description="keyword misses only")
        self.utt_box = w.Select(options=[], rows=8, description="utterance", layout=w.Layout(width="95%"))
        self.keywords_text = w.Text(value=", ".join(keywords or []), description="keywords",
                                    placeholder="comma-separated words for the biasing prompt")
        self.redecode_button = w.Button(description="re-decode with these keywords", layout=w.Layout(width="auto"))
        self.audio = w.Audio(autoplay=False)
        self.align_html, self.status = w.HTML(), w.HTML()
        self._wire()
        self.widget = w.VBox([w.HBox([self.set_box, self.model_box]),
                              w.HBox([self.speaker_box, self.errors_box, self.misses_box]), self.utt_box,
                              self.audio, self.align_html, w.HBox([self.keywords_text, self.redecode_button]),
                              self.status])
        self.on_set()

    def _wire(self) -> None:
        self.set_box.observe(lambda _: self.on_set(), names="value")
        self.model_box.observe(lambda _: self.on_model(), names="value")
        for box in (self.speaker_box, self.errors_box, self.misses_box):
            box.observe(lambda _: self.on_filter(), names="value")
        self.utt_box.observe(lambda _: self.on_pick(), names="value")
        self.redecode_button.on_click(lambda _: self.on_redecode())

    # ----- state -------------------------------------------------------------------------------------------
    def system(self):
        """The chosen model, built on first use (the one held before is let go)."""
        name = self.model_box.value
        if self._held is None or self._held[0] != name:
            self._held = None
            self._held = (name, self.factories[name]())
        return self._held[1]

    def records(self) -> list[UttRecord]:
        """The chosen set decoded by the chosen model (cached)."""
        key = (self.set_box.value, self.model_box.value)
        if key not in self._records:
            self.status.value = f"decoding {key[0]} with {key[1]} ..."
            self._records[key] = evaluate(self.system(), self.test_sets[key[0]], key[0]).records
            self.status.value = ""
        return self._records[key]

    def visible(self) -> list[UttRecord]:
        """The records that pass the filters."""
        out = self.records()
        if self.speaker_box.value != ALL:
            out = [r for r in out if r.meta.get("speaker") == self.speaker_box.value]
        if self.errors_box.value:
            out = [r for r in out if r.wrong]
        if self.misses_box.value:
            out = [r for r in out if not all(r.keyword_hits().values())]
        return out

    def picked(self) -> UttRecord | None:
        return next((r for r in self.records() if r.id == self.utt_box.value), None)

    # ----- callbacks ---------------------------------------------------------------------------------------
    def on_set(self) -> None:
        speakers = sorted({u.speaker for u in self.test_sets[self.set_box.value]})
        self.speaker_box.options = [ALL, *speakers]
        self.speaker_box.value = ALL
        self.on_filter()

    def on_model(self) -> None:
        self.on_filter()

    def on_filter(self) -> None:
        rows = self.visible()
        self.utt_box.options = [(f"{r.id}  [{r.errors} err]  {r.reference[:60]}", r.id) for r in rows]
        self.utt_box.value = rows[0].id if rows else None
        self.status.value = f"{len(rows)} of {len(self.records())} utterances"
        self.on_pick()

    def on_pick(self) -> None:
        rec = self.picked()
        if rec is None:
            self.align_html.value = "<i>no utterance passes the filters</i>"
            return
        self.show(rec)
        path = Path(rec.audio)
        if path.is_file():
            self.audio.format = path.suffix.lstrip(".") or "wav"
            self.audio.value = path.read_bytes()

    def show(self, rec: UttRecord, note: str = "") -> None:
        hits = rec.keyword_hits()
        kw = ", ".join(f"{k} {'✓' if ok else '✗'}" for k, ok in hits.items()) or "none"
        self.align_html.value = (f"<b>{rec.id}</b> · {rec.meta.get('speaker', '')} · {rec.errors} errors in "
                                 f"{rec.ref_words} words · keywords: {kw} {note}" + alignment_html(
                                     [(op, ref, hyp if hyp is None else clean(hyp)) for op, ref, hyp in rec.ops]))

    def keywords(self) -> list[str]:
        return [k.strip() for k in self.keywords_text.value.split(",") if k.strip()]

    def on_redecode(self) -> UttRecord | None:
        """Decode the picked utterance again with the edited keyword list; show and return its new record."""
        rec = self.picked()
        if rec is None:
            return None
        utt = next(u for u in self.test_sets[self.set_box.value] if u.id == rec.id)
        system, words = self.system(), self.keywords()
        out = system.decode([utt], keywords=words)
        new = UttRecord.make(utt, out.texts[0], reference=rec.reference, biasing=words, seconds=out.seconds[0])
        note = "" if system.keywords else f"<i>({self.model_box.value} takes no keyword list)</i>"
        self.show(new, f"· re-decoded with [{', '.join(words)}] {note}")
        return new
