"""Write notebooks/04_context_biasing.ipynb (without outputs) from the cells below.

    .venv/bin/python scripts/build_notebook04.py
"""
from __future__ import annotations

from pathlib import Path

from speechlm_lib.publish import build_notebook

CELLS = [
    ("md", """# 04 · Contextual biasing: telling the recogniser which names to expect

Our test split was built for this notebook: about one word in eight is a name (a person, a street, a company)
drawn from a pool that never occurs in training text. A recogniser has never heard them, so it writes something
that sounds alike. **Contextual biasing** gives it a list of words that may occur (a contact list, the names in
a meeting invitation) and asks it to prefer them.

A classic recogniser needs machinery for that: a biasing graph or trie, shallow fusion with a list-specific
language model, re-training when the list changes. A speech-LLM already reads text: the list is *a line of the
prompt*. SALM (Chen et al. 2024) showed that this works once the model has been trained with such lines —
**speech-supervised in-context training (ICT)**: most training examples get a list holding their own rare words
and distractors, so the model learns that the list is a hint, not a script to copy."""),
    ("code", """import time

import pandas as pd

from speechlm_lib import config, course, results
from speechlm_lib.recipes.stage4_context import Stage4Config

PROFILE = course.start()  # profile, torch threads ($SPEECHLM_THREADS), figure style
cfg = Stage4Config.preset(PROFILE)  # configs/stage4_context/<profile>.yaml
SMOKE = PROFILE == "smoke"
print(f"ICT p={cfg.ict.probability}, positive ratio {cfg.ict.positive_ratio}, "
      f"{cfg.ict.min_distractors}-{cfg.ict.max_distractors} distractors, {cfg.train.max_steps} updates; "
      f"test lists with N = {cfg.evaluation.distractors} distractors")"""),
    ("md", """## The context line

`models/context.py` turns a list into one line in front of the instruction. The list is cleaned first (spaces
stripped, empty entries and duplicates dropped); an empty list means no context at all. The project's prompt puts
the instruction before the audio, so the list comes *before the audio*, inside the chat template's user turn."""),
    ("code", """from speechlm_lib.models.context import clean_list, with_context

words = [" Barillaro", "Kowalczyk", "barillaro", "", "Ijzerman"]
print(clean_list(words))
print(with_context(cfg.instruction, words))
print(with_context(cfg.instruction, []))"""),
    ("code", """from speechlm_lib.recipes.stage4_context import load_splits, load_stage3

model = load_stage3(cfg)  # notebook 03's model; its adapters go on training
splits = load_splits(cfg)
print({split: len(utts) for split, utts in splits.items()})"""),
    ("md", """## Training data: ICT lists

Each English transcription example gets a list with probability `p`; the list holds each of the utterance's own
keywords with probability `positive_ratio` (so the model also meets lists that miss a word that *is* said) and a
random number of distractors from the names of the other training sentences, in random order."""),
    ("code", """from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.recipes.stage4_context import make_ict_dataset

cache = FeatureCache.for_encoder(model.encoder)
train_ds = make_ict_dataset(cfg, model, splits["train"], cache=cache, progress=False)
lists = list(train_ds.contexts.values())
print(f"{len(train_ds)} examples, {sum(w is not None for w in lists)} with a list, "
      f"mean length {sum(len(w) for w in lists if w) / max(1, sum(bool(w) for w in lists)):.1f}")"""),
    ("md", """One training prompt, token by token: the list and the instruction, then the audio embeddings; only the
transcript and the end-of-turn token are in the loss."""),
    ("code", """i = next(i for i, u in enumerate(train_ds.utts) if train_ds.contexts.get(id(u)))
utt = train_ds.utts[i]
for segment, text, in_loss in model.prompts.explain(utt.text, n_audio=max(1, int(utt.duration * model.token_rate)),
                                                    instruction=train_ds.instructions[id(utt)]):
    print(f"{segment:>7} {'LOSS' if in_loss else '    '} {text!r}")
ids = model.prompts.prompt(train_ds.instructions[id(utt)]).prefix
print([model.tokenizer.decode([t]) for t in ids][-24:])"""),
    ("md", """## Test lists, by the LibriSpeech convention

Le et al. (2021) gave every LibriSpeech test utterance a biasing list: its own rare words plus N distractors
(100 to 2000) from a pool of rare words. We do the same with the pool of names never heard in training, for
every N of the preset, plus no list at all. Scores (`metrics_bias.py`): **B-WER** on the list words of the
reference (an inserted list word is a B error too), **U-WER** on all other words, keyword precision / recall /
F1, and **false alarms**: list words written that were not said."""),
    ("code", """from speechlm_lib.recipes.stage4_context import evaluation_lists

test = splits["test"]
test_lists = evaluation_lists(cfg, splits)
n_max = max(cfg.evaluation.distractors)
print(f"utterance {test[0].id}: {test[0].text!r}\\n  keywords {test[0].keywords}\\n  N={n_max} list starts "
      f"{test_lists[n_max][0][:8]}")"""),
    ("md", """## Before ICT: the stage-3 model given the same lists

Does the training matter? The stage-3 model never saw a list; the same test, the same lists:"""),
    ("result", """from speechlm_lib.recipes.stage4_context import evaluate_biasing, table

before = evaluate_biasing(cfg, model, test, test_lists, cache=cache)
display(pd.DataFrame(table(before)).set_index("N").round(3))
course.note()"""),
    ("md", "## Training"),
    ("result", """from speechlm_lib.recipes.stage4_context import train_ict

out_dir = config.runs_dir() / PROFILE / "stage4_context"
result = train_ict(cfg, model, train_ds, cache=cache, output_dir=out_dir)
print(f"{result['final']['step']} updates in {result['train_seconds']:.0f} s, last loss {result['final'].get('train_loss')}")
course.note(("training time", "stage4_context_bench", "train_seconds", "s"))"""),
    ("md", """## After ICT, beside Whisper given the same lists

Whisper takes the same line as its *prompt* (`prompt_ids`: the text of a previous segment, which its decoder
conditions on). Its prompt holds at most 223 tokens, so long lists are cut from their end (`lists_cut`)."""),
    ("result", """after = evaluate_biasing(cfg, model, test, test_lists, cache=cache)
frames = {"stage 3": pd.DataFrame(table(before)), "ICT": pd.DataFrame(table(after))}
if cfg.evaluation.whisper:
    from speechlm_lib.recipes.stage4_context import whisper_biasing

    peer = whisper_biasing(cfg, test, test_lists)
    frames["Whisper tiny.en"] = pd.DataFrame(table(peer))
summary = pd.concat(frames, names=["model"]).reset_index(level=0)
display(summary[["model", "N", "wer", "u_wer", "b_wer", "f1", "false_alarms", "seconds_per_utt"]].round(3))
course.note()"""),
    ("code", """import matplotlib.pyplot as plt

from speechlm_lib import plots

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, frame in frames.items():
    rows = frame[frame["N"] != "none"]
    for ax, key in zip(axes, ("b_wer", "u_wer")):
        line, = ax.plot(rows["N"].astype(int) + 1, rows[key], marker="o", label=name)
        ax.axhline(frame[frame["N"] == "none"][key].iloc[0], ls=":", color=line.get_color())
for ax, key, title in zip(axes, ("B-WER (fraction of list words)", "U-WER (fraction of other words)"),
                          ("Words on the list", "All other words")):
    ax.set(xscale="log", xlabel="N + 1 (distractors in the list, log scale)", ylabel=key, title=title)
axes[0].legend(loc="best", fontsize=9)
plots.show(fig)  # the course style lays figures out (constrained layout); tight_layout would warn"""),
    ("md", """The dotted lines are each model without any list. The cost of the list: prompt tokens and decoding time
per utterance grow with N (SALM's weakness with long lists)."""),
    ("result", """display(pd.DataFrame(table(after)).set_index("N")[["prompt_tokens", "seconds_per_utt", "lists_cut"]].round(3))
course.note()"""),
    ("md", "## Where the list helps, and where it misleads"),
    ("result", """from speechlm_lib.metrics_bias import example_rows

n_show = max(cfg.evaluation.distractors)
rows = example_rows(after[n_show]["ids"], [u.text for u in test], after[n_show]["hyps"], test_lists[n_show],
                    baseline_hyps=after["none"]["hyps"])
for kind, title in (("fixed", "the list fixes a name"), ("false_alarm", "a list word written that was not said")):
    print(f"-- {title}: {len(rows[kind])} utterances")
    for r in rows[kind][:3]:
        print(f"   REF  {r['ref']}\\n   NONE {course.clean(r['baseline'])}\\n   LIST {course.clean(r['hyp'])}"
              f"   ({', '.join(r['words'])})")
course.note()"""),
    ("md", """## Snapping near-misses to the list

The ICT model often writes a name *almost* as listed ("Krolovre" for "Crolovre"), or keeps the projector's
garbled pieces ("Broaard" for "Rotraut"). Contextual spelling correction after the recogniser is the classic cheap
fix, and `decoding/list_snap.py` is one: every run of one to three capitalised words the model wrote is compared,
letter by letter, with every entry of its list, and the closest entry replaces it when they agree at least
`min_score` (0..1). Two rules keep it from writing distractors over real words: a word the model heard in
training (`training_vocabulary`) is never replaced, and each entry is used once. The first rule works here because
the names on the test lists are, by construction, words never heard in training.

The threshold is chosen on **dev**, never on test: too low and distractors replace real words, too high and
nothing changes."""),
    ("result", """from dataclasses import replace

from speechlm_lib.decoding.list_snap import training_vocabulary
from speechlm_lib.recipes.stage4_context import decode_pooled, snapped_scores, tune_snap

known = training_vocabulary(u.text for u in splits["train"])  # the words snapping never replaces
dev_lists = {n: w for n, w in evaluation_lists(cfg, splits, split="dev").items() if n != "none"}
decoded = decode_pooled(cfg, model, splits["dev"], dev_lists, cache)  # dev decoded once, for both thresholds
best, grid = tune_snap(cfg, model, splits["dev"], dev_lists, known=known, decoded=decoded)
display(pd.DataFrame(grid).set_index("min_score").round(3).T)
print(f"the threshold chosen on dev: {best}")
course.note(("threshold chosen on dev", "stage4_list_snap", "snap_min_score", ""))"""),
    ("md", """The test transcripts of the ICT model above, snapped at that threshold: no second decoding, the same
transcripts with their near-misses replaced."""),
    ("result", """snap_cfg = replace(cfg, evaluation=replace(cfg.evaluation, snap=replace(cfg.evaluation.snap, min_score=best)))
truth = [u.keywords for u in test]
snapped = {n: snapped_scores(snap_cfg, test, res["hyps"], res["given"], test_lists[n] or truth, known)
           for n, res in after.items()}
display(pd.DataFrame([{"N": n, "B-WER": res["b_wer"], "B-WER snapped": snapped[n]["b_wer"], "WER": res["wer"],
                       "WER snapped": snapped[n]["wer"], "false alarms": res["false_alarms"],
                       "false alarms snapped": snapped[n]["false_alarms"]} for n, res in after.items()])
        .set_index("N").round(3))
course.note(("B-WER with N = 0: before", "stage4_list_snap", "ict_nosnap_0_b_wer", "%"),
            ("snapped", "stage4_list_snap", "ict_0_b_wer", "%"),
            ("with N = 100: before", "stage4_list_snap", "ict_nosnap_100_b_wer", "%"),
            ("snapped", "stage4_list_snap", "ict_100_b_wer", "%"))"""),
    ("md", """Which transcripts it changed, with the longest lists: some for the better, some for the worse (a
distractor written over a name the model heard, or over the wrong name)."""),
    ("result", """from speechlm_lib.metrics import wer

changed = [(u.text, a, s) for u, a, s in zip(test, after[n_show]["hyps"], snapped[n_show]["hyps"]) if a != s]
better = [c for c in changed if wer([c[0]], [c[2]]) < wer([c[0]], [c[1]])]
worse = [c for c in changed if wer([c[0]], [c[2]]) > wer([c[0]], [c[1]])]
print(f"N = {n_show}: {len(changed)} transcripts changed, {len(better)} for the better, {len(worse)} for the worse")
for title, rows in (("better", better), ("worse", worse)):
    for ref, a, s in rows[:2]:
        print(f"-- {title}\\n   REF     {ref}\\n   ICT     {course.clean(a)}\\n   SNAPPED {course.clean(s)}")
course.note()"""),
    ("md", """## Placing the names the spotter hears

Snapping needs the model to have written *something* like the name. When the LLM dropped it, or wrote ordinary
words in its place ("brought out" for "Rotraut"), there is nothing to snap. The `ctc` projector still heard it:
its posteriors hold the name's word pieces among the runners-up, and a CTC keyword spotter
(`decoding/keyword_spot.py`, the same one that can filter the list) finds each list entry's best alignment in
them -- how well it fits, and *when*. `decoding/list_place.py` takes each entry the answer still lacks after
snapping, finds the projector's words at those frames, the answer's words aligned to them, and writes the entry
there (or inserts it where the LLM left a gap, on the side it was heard). A name the answer already holds, but on
words the projector heard elsewhere, *moves* to where it was spotted, and the projector's words go back: the LLM
often writes a name it half-heard over the wrong word ("Bojczuk is calling from Boz Motors" for "Scott White is
calling from Bojczuk Motors"), or swaps two names. A name the answer holds where the spotter heard it keeps its
words: an entry spotted less well cannot take them. The threshold on the spotter's similarity is chosen on dev, after
snapping, from the same dev decoding. It is a threshold *per list entry*: an entry needs `min_similarity` times the
list's length. With only the utterance's own names, every entry is likely said and a weak fit goes in; among 100
distractors a weak fit is most likely one of them."""),
    ("result", """from speechlm_lib.decoding.list_filter import projector_spotted
from speechlm_lib.recipes.stage4_context import tune_place

best_place, grid = tune_place(snap_cfg, model, splits["dev"], dev_lists, cache=cache, known=known, decoded=decoded)
display(pd.DataFrame(grid).set_index("min_similarity").round(3).T)
print(f"the placing threshold chosen on dev: {best_place} per entry ({best_place * 100:.3g} for a list of 100)")
place_cfg = replace(snap_cfg, evaluation=replace(snap_cfg.evaluation,
                                                 place=replace(cfg.evaluation.place, min_similarity=best_place)))
spotted = projector_spotted(model, test, cache)  # one projector pass over the test set
placed = {n: snapped_scores(place_cfg, test, res["hyps"], res["given"], test_lists[n] or truth, known, spotted)
          for n, res in after.items()}
display(pd.DataFrame([{"N": n, "B-WER": res["b_wer"], "snapped": snapped[n]["b_wer"], "placed": placed[n]["b_wer"],
                       "WER": res["wer"], "WER snapped": snapped[n]["wer"], "WER placed": placed[n]["wer"],
                       "false alarms placed": placed[n]["false_alarms"]} for n, res in after.items()])
        .set_index("N").round(3))
course.note(("placing threshold chosen on dev", "stage4_context", "place_min_similarity", ""),
            ("B-WER with N = 0 snapped", "stage4_context", "ict_snapped_0_b_wer", "%"),
            ("and placed", "stage4_context", "ict_placed_0_b_wer", "%"),
            ("with N = 100 snapped", "stage4_context", "ict_snapped_100_b_wer", "%"),
            ("and placed", "stage4_context", "ict_placed_100_b_wer", "%"))"""),
    ("result", """gained = [(u.text, s, p) for u, s, p in zip(test, snapped[0]["hyps"], placed[0]["hyps"]) if s != p]
print(f"N = 0: {len(gained)} transcripts changed by placing")
for ref, s, p in gained[:3]:
    print(f"   REF     {ref}\\n   SNAPPED {course.clean(s)}\\n   PLACED  {course.clean(p)}")
course.note()"""),
    ("md", "## Live: one utterance with and without its list"),
    ("result", """from speechlm_lib.decoding.generation import transcribe

utt = next((u for u in test if u.keywords), test[0])
for words in (None, utt.keywords, test_lists[n_show][test.index(utt)]):
    t = time.perf_counter()
    text = transcribe(model, [utt], cfg.decode, instruction=with_context(cfg.instruction, words), progress=False).texts[0]
    print(f"{'no list' if words is None else f'{len(words)} words':>10}  {time.perf_counter() - t:.2f} s  "
          f"{course.clean(text)}")
print(f"{'reference':>10}         {utt.text}")
course.note()"""),
    ("md", "## Recording the results"),
    ("result", """flat = {f"{name}_{n}_{k}": v for name, res in (("stage3", before), ("ict", after)) for n, s in res.items()
        for k, v in s.items() if isinstance(v, (int, float))}
flat.update({f"ict_{kind}_{n}_{k}": v for kind, res in (("snapped", snapped), ("placed", placed))
             for n, s in res.items() for k, v in s.items() if isinstance(v, (int, float))})
flat.update(train_seconds=result["train_seconds"], snap_min_score=best, place_min_similarity=best_place)
path = results.record("stage4_context", flat, seconds=result["train_seconds"], config=cfg.to_dict())
print(f"recorded {len(flat)} figures in {path}")
course.note()"""),
    ("md", """## Where this stands

The cpu reference run (`benchmarks/bench_stage4.py --profile cpu`, from `runs/cpu/results.json`) and its targets:
B-WER with 100 distractors at most 0.4 x the no-list B-WER, U-WER at most 10 % above it, B-WER with only the true
keywords at most 10 %, whole-test WER with 100 distractors at most 10 %, training at most 10 minutes, and the list
costing at most 50 % more decoding time."""),
    ("code", """bench = results.load("cpu")["stages"].get("stage4_context_bench", {}).get("metrics", {})
if not bench:
    print("No cpu reference run recorded yet: run  .venv/bin/python benchmarks/bench_stage4.py --profile cpu")
for key, value in bench.items():
    if key.startswith(("target_", "ict_none_", "ict_100_", "whisper_100_", "train_seconds")):
        print(f"{key:<40} {value}")"""),
]


def build(path: Path) -> Path:
    return build_notebook(CELLS, path, "04")


if __name__ == "__main__":
    print(build(Path(__file__).resolve().parents[1] / "notebooks" / "04_context_biasing.ipynb"))
