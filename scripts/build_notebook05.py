"""Write notebooks/05_evaluation.ipynb (committed without outputs): ``python scripts/build_notebook05.py``."""
from __future__ import annotations

from pathlib import Path

from speechlm_lib.publish import build_notebook

CELLS = [
("md", """# 05 · Evaluation: every stage, every test set, with honest error bars

One evaluation module (`speechlm_lib.evaluation`) scores every system the course built, and the baselines a user
would pick instead, the same way:

* **systems** (`evaluation.systems.SYSTEMS`): stage-1 CTC, the speech-LLM of stage 2, 3 and 4 (with and without a
  keyword list), the stage-2 projector alone, Whisper tiny.en, and faster-whisper (the same weights in CTranslate2,
  int8). Each decodes in batches, with a token budget tied to the audio and a repetition guard (`evaluation.guards`);
* **test sets** (`evaluation.testsets`): the synthetic test split (unseen voices and names), the same at 20 / 10 /
  5 dB SNR, the German split, speechocean762's held-out speakers (real, non-native speech), or any `DataSource`;
* **per utterance**: reference, hypothesis, word alignment, keyword hits, seconds; **aggregates**: WER / CER,
  U-WER / B-WER, BLEU / chrF, RTF, peak memory, and bootstrap 95 % intervals, so two systems are compared honestly.

Systems whose saved folder is absent are skipped with a line: the notebook scores whatever exists."""),
("code", """import time

import matplotlib.pyplot as plt
import pandas as pd

from speechlm_lib import config, course, plots, results
from speechlm_lib.evaluation.suite import NOISY_SYSTEMS

PROFILE = course.start()  # profile, torch threads ($SPEECHLM_THREADS), figure style
SMOKE = PROFILE == "smoke"
RUNS = config.runs_dir() / PROFILE
N = 2 if SMOKE else 100          # utterances per test set
N_NOISY = 2 if SMOKE else 50     # per noisy copy
NOISY_FOR = ("stage 4, no list",) if SMOKE else NOISY_SYSTEMS  # the systems that meet the noisy copies
SHARED = {}                      # frozen parts the speech-LLM folders share (one Whisper encoder, loaded once)
started = time.time()"""),
("md", """## Test sets

Noisy copies use the corpus builder's noise (`data.corpus.add_noise`, white, seeded by the utterance id) and are
written once to the cache. speechocean762 is split by speaker, never by utterance; its manifest's extra fields
(age, gender) are kept in `Utterance.extra`, so results break down by them."""),
("code", """from speechlm_lib.evaluation.testsets import SNRS, load_test_sets

test_sets = load_test_sets(["synthetic", "speechocean"], PROFILE, N)
CLEAN = tuple(test_sets)
test_sets.update(load_test_sets([f"snr{s}" for s in SNRS], PROFILE, N_NOISY))
NOISY = tuple(k for k in test_sets if k not in CLEAN)
display(pd.DataFrame([{"test set": k, "utterances": len(v), "speakers": len({u.speaker for u in v}),
                       "minutes": round(sum(u.duration for u in v) / 60, 2),
                       "extra fields": ", ".join(sorted({f for u in v for f in u.extra}))}
                      for k, v in test_sets.items()]))"""),
("md", """## The guards every decoder passes

A looping decoder costs more than a wrong word: every looped word is an insertion. Each system caps new tokens by
the audio's length, and its text is cut after an n-gram repeats more than three times in a row:"""),
("code", """from speechlm_lib.evaluation.guards import GuardConfig, guard, token_budget

g = GuardConfig()
print(guard("thank you thank you thank you thank you thank you so much", seconds=2.0))
print(f"a 3-second clip: at most {token_budget(3.0, g)} new tokens")"""),
("md", """## Every system on every test set

One system is held in memory at a time (stage 4 without and with its list share one; the speech-LLM folders
share the frozen Whisper encoder they all name). Every system meets the clean sets; the speech-LLMs of stages 3
and 4 and Whisper also the noisy copies (in the smoke profile only stage 4 without a list, to stay within a
minute); faster-whisper (here for its speed) the synthetic set. The speech-LLM of stage 4 gets each test set's
keyword list (every keyword of its utterances) in its prompt in one row, none in the other."""),
("result", """from speechlm_lib.evaluation.suite import course_specs, run_suite, table

specs = course_specs(RUNS, CLEAN, NOISY, noisy_for=NOISY_FOR)
evals = run_suite(specs, test_sets, shared=SHARED)
summary = table(evals)
display(summary.round(3))
course.note(("stage-1 CTC test WER", "stage1_ctc", "test_wer", "%"),
            ("stage-2 speech-LLM test WER", "stage2_speechlm", "test_wer", "%"),
            ("Whisper tiny.en test WER", "stage2_speechlm", "whisper_tiny_test_wer", "%"),
            ("stage 4 + list, synthetic WER", "stage5_evaluation", "stage 4 + list|synthetic|wer", "%"))"""),
("md", """## Comparing two systems honestly

A WER difference on a few hundred utterances can be noise. The paired bootstrap resamples utterances for both
systems together: if the interval of the difference excludes zero, the better system is better on this kind of
speech."""),
("result", """from speechlm_lib.evaluation.aggregate import paired_bootstrap

llms = [label for label, name in evals if name == "synthetic" and label.startswith("stage") and "CTC" not in label
        and "projector" not in label]
if llms and ("Whisper tiny.en", "synthetic") in evals:
    best = llms[-1]
    cmp = paired_bootstrap(evals[("Whisper tiny.en", "synthetic")].records, evals[(best, "synthetic")].records)
    print(f"{best} minus Whisper tiny.en, synthetic test WER: {cmp['delta']:+.1%} "
          f"(95 % interval {cmp['low']:+.1%} .. {cmp['high']:+.1%}; {best} better in {cmp['b_better']:.0%} of resamples)")
else:
    print("no speech-LLM and Whisper pair on the synthetic set here: nothing to compare")
course.note(("stage-2 speech-LLM test WER", "stage2_speechlm", "test_wer", "%"),
            ("Whisper tiny.en test WER", "stage2_speechlm", "whisper_tiny_test_wer", "%"))"""),
("md", """## WER by stage, and against noise"""),
("result", """fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
syn = summary[summary["test set"] == "synthetic"].iloc[::-1]
ax1.barh(syn["system"], 100 * syn["wer"], xerr=[100 * (syn["wer"] - syn["wer_low"]), 100 * (syn["wer_high"] - syn["wer"])],
         capsize=4)
ax1.set(title="Synthetic test set: WER by system", xlabel="WER (%; bars: 95 % interval)", ylabel="system")
for label in summary["system"].unique():
    pts = [(s, evals[(label, f"snr{s}")].summary["wer"]) for s in SNRS if (label, f"snr{s}") in evals]
    if pts and ("projector" not in label) and ("CTC" not in label):
        clean = evals.get((label, "synthetic"))
        xs = ([40] if clean else []) + [p[0] for p in pts]
        ys = ([clean.summary["wer"]] if clean else []) + [p[1] for p in pts]
        ax2.plot(xs, [100 * y for y in ys], "o-", label=label)
ax2.set(title="WER against white noise", xlabel="signal-to-noise ratio (dB)", ylabel="WER (%)",
        xticks=[40, *SNRS], xticklabels=["clean", *map(str, SNRS)])
ax2.invert_xaxis()
if ax2.get_lines():
    ax2.legend(loc="upper left", bbox_to_anchor=(1.02, 1), title="system")
plots.show(fig)
course.note()"""),
("md", """## Per speaker (and age group / gender where the manifest says)"""),
("result", """from speechlm_lib.evaluation.aggregate import breakdown

focus = llms[-1] if llms else summary["system"].iloc[0]
if (focus, "synthetic") in evals:
    per_speaker = breakdown(evals[(focus, "synthetic")].records, "speaker")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(per_speaker) + 1.8))
    ax.barh(per_speaker["speaker"], 100 * per_speaker["wer"], capsize=3,
            xerr=[100 * (per_speaker["wer"] - per_speaker["wer_low"]), 100 * (per_speaker["wer_high"] - per_speaker["wer"])])
    ax.set(title=f"{focus}: WER per synthetic voice", xlabel="WER (%; bars: 95 % interval)", ylabel="voice (eSpeak)")
    plots.show(fig)
if (focus, "speechocean") in evals:
    for field in ("age_group", "gender"):
        display(breakdown(evals[(focus, "speechocean")].records, field).round(3))
else:
    print("speechocean762 is absent (../shared/data/speechocean762): no age or gender breakdown.")
course.note()"""),
("md", """## Real speech: fine-tuning on speechocean762's train speakers

A model trained only on eSpeak voices hears real, non-native read speech as noise: on speechocean762's held-out
speakers the synthetic stage-3 model scores about 94 % WER where the complete Whisper tiny.en, whose encoder it
borrows, scores about 43 %. Nothing transfers until the model has heard real voices.

The recipe is stage 3's, on the corpus's train speakers (preset `configs/stage3_lora/cpu-speechocean.yaml`, split
by speaker 80/10/10, the same held-out speakers as the table above):

1. **re-align the projector** by CTC, the LLM idle (`recipes.stage3_lora.realign_projector`): its vocabulary grows
   to the corpus's word pieces (`CTCProjector.extend_vocabulary`), then it learns the real voices;
2. **LoRA on the LLM** for English ASR, the projector frozen, its tokens drawn at temperature 1 as in stage 3.

The speech-LLM reads only the projector's best path, and on these speakers it copies it. The table's last row
lets the LLM weigh the alternatives instead (`decoding.ctc_rescore`): a CTC prefix beam search over the
projector's posteriors keeps its 16 most probable transcripts, the LLM (adapters off) scores each as the next
line after five training transcripts, and a weighted sum of the two log-probabilities and a length bonus picks
one. The weights were chosen on the dev speakers by `benchmarks/bench_rescore.py` (for the model fine-tuned from
scratch; they are the LLM's weights against the projector's, so they carry over) and are read from
`runs/<profile>/results.json` (the class's defaults when that has not run). The reference run: 46.1 % for the
projector's best path, 41.6 % rescored, 1.06 × Whisper with a paired interval of [0.96, 1.17] — the first
time on real speech that the LLM adds something. Two more steps closed the gap (docs/real_speech_findings.md):
the projector re-aligned on every clip also played at 0.9 × and 1.1 × speed (`realign_speeds`, more voices from
the same 2,000 utterances) with three heads averaged (`projector_members`), then its 32 best transcripts
rescored: 39.0 % against Whisper tiny.en's 39.4 %, 0.99 × [0.89, 1.09] — as good as the model whose ears it
borrows, within what 260 utterances can tell apart, in 13.3 minutes of training from nothing. When the
benchmarks have saved that model (`runs/<profile>/real_speech_speed_members3_scratch`), it is scored here too, as
the table's last row.

Here the steps start from the synthetic stage-2 model of notebook 02 (about 10 minutes on a 2-core CPU), unless a
fine-tuned model is already saved in `runs/<profile>/real_*`, which is then scored like every other system in
this notebook. `benchmarks/bench_real_speech.py` runs the steps from both starts: the synthetic model, and a new
projector (nothing learnt from the synthetic corpus).

**Online?** The same cells run on LibriSpeech (or any `datasets` corpus): set `REAL_SOURCE` below, e.g.
`["data.source.kind=hf", "data.source.name=openslr/librispeech_asr", "data.source.config=clean",
"data.source.split_by_speaker=None", "data.source.splits={'train': 'train.100', 'dev': 'validation', 'test': 'test'}"]`."""),
("result", """from speechlm_lib.experiments.real_speech import SMOKE as SMOKE_REAL, real_speech_rows
from speechlm_lib.recipes.stage3_lora import Stage3Config

REAL_SOURCE = []  # data.source settings of another corpus (see above); [] = speechocean762
real_cfg = Stage3Config.preset("cpu-speechocean").override([*REAL_SOURCE, *(SMOKE_REAL if SMOKE else ())])
real_rows = real_speech_rows(real_cfg, RUNS, PROFILE, SHARED)
if real_rows:
    display(pd.DataFrame(real_rows).drop(columns=["rtf"], errors="ignore").round(3))
course.note(("Whisper tiny.en, held-out speakers", "real_speech_bench", "whisper_wer", "%"),
            ("fine-tuned from the synthetic model", "real_speech_bench", "synthetic_wer", "%"),
            ("its ratio to Whisper", "real_speech_bench", "synthetic_to_whisper", ""),
            ("fine-tuned from scratch", "real_speech_bench", "scratch_wer", "%"),
            ("its n-best rescored by the LLM", "real_speech_rescore", "rescored_wer", "%"),
            ("its ratio to Whisper", "real_speech_rescore", "rescored_to_whisper", ""),
            ("speed copies, three heads, 32-best rescored", "real_speech_rescore_speed_members3_b32_lm",
             "rescored_wer", "%"),
            ("its ratio to Whisper", "real_speech_rescore_speed_members3_b32_lm", "rescored_to_whisper", ""))"""),
("md", """## B-WER against the size of the keyword list

A biasing list holds the words that matter (names) and, in use, many that do not. B-WER counts errors on the
listed words, U-WER on the rest: a good biasing model lowers B-WER without raising U-WER as the list grows. The
list here is the test set's own keywords plus distractors drawn from the training keywords."""),
("result", """from speechlm_lib.data.sources import DataSource
from speechlm_lib.evaluation.suite import list_size_sweep, sweep_figure
from speechlm_lib.evaluation.systems import SYSTEMS
from speechlm_lib.evaluation.testsets import from_source

train = from_source(DataSource(splits={"train": "train"}), "train", PROFILE)
folder = next((RUNS / d for d in ("stage4_context", "stage3_lora", "stage2_speechlm") if (RUNS / d).is_dir()), None)
sizes = (0, 5, 20) if SMOKE else (0, 10, 50, 100)
bwer = pd.DataFrame()
if folder is not None:
    llm = SYSTEMS.build("speechlm", folder=folder, shared=SHARED)
    bwer = list_size_sweep(llm, test_sets["synthetic"], train, sizes)
    plots.show(sweep_figure(bwer, folder.name))
    display(bwer.round(3))
else:
    print("no saved speech-LLM here: no keyword-list sweep")
course.note()"""),
("md", """## Error analysis

The most frequent substitutions, errors by how often training saw the word, insertions (and utterances that look
like hallucinations), and, word by reference word, where the LLM fixed or broke what the stage-2 projector heard."""),
("result", """from speechlm_lib.evaluation.analysis import by_word_frequency, fixed_and_broke, insertions, substitutions
from speechlm_lib.metrics import word_counts

recs = evals[(focus, "synthetic")].records if (focus, "synthetic") in evals else []
display(course.clean_frame(substitutions(recs)))
display(by_word_frequency(recs, word_counts(u.text for u in train)).round(3))
common, odd = insertions(recs)
display(course.clean_frame(common), course.clean_frame(odd))
course.note()"""),
("result", """if ("stage 2 projector", "synthetic") in evals:
    fb = fixed_and_broke(evals[("stage 2 projector", "synthetic")].records, evals[("stage 2", "synthetic")].records)
    print({k: v for k, v in fb.items() if k != "examples"})
    display(course.clean_frame(fb["examples"]))
else:
    print("no stage-2 model here: no projector-vs-LLM comparison")
course.note()"""),
("md", """## Speed and memory

RTF (compute seconds per audio second, decoding only) and the peak resident memory while each system decoded
the synthetic set. Then the speech-LLM's batched decoding (batch 8) against faster-whisper on the same audio in the
same run, alternating, the median of the repeats, on the first 48 synthetic test utterances as in the benchmark
(`evaluation.speed`; the cpu figure comes from `benchmarks/bench_speed.py --profile cpu`). Each of the two runs in
a process of its own (`evaluation.isolated`): in one process, faster-whisper's thread runtime left torch's threads
sleeping between operations, and the speech-LLM decoded 1.6 × slower than alone."""),
("result", """from speechlm_lib.evaluation.speed import against_faster_whisper
from speechlm_lib.evaluation.systems import SystemUnavailable

display(summary[summary["test set"] == "synthetic"][["system", "rtf", "peak_mb"]].round(3))
ratio = None
if folder is not None:
    try:
        timing = against_faster_whisper(folder, test_sets["synthetic"][:48], repeats=1 if SMOKE else 3,
                                        warmup=1 if SMOKE else 2)
        ratio = timing["ratio"]
        print(f"RTF speech-LLM {timing['rtf']['speech-LLM']:.3f}, faster-whisper {timing['rtf']['faster-whisper']:.3f}: ratio {ratio:.2f}")
    except SystemUnavailable as e:
        print(f"faster-whisper skipped: {e}")
course.note(("stage-2 speech-LLM RTF", "stage2_speechlm", "rtf", ""),
            ("speech-LLM / faster-whisper RTF", "stage5_evaluation", "speed_ratio_speechlm_to_faster_whisper", ""))"""),
("md", """## Explore

Choose a test set and filter it, pick an utterance, listen, and read the alignment (substitutions amber,
deletions red, insertions blue). Switch the model, edit the keyword list and re-decode the utterance live.
The sets the table above decoded are not decoded again; a model is loaded when you first pick it."""),
("code", """from speechlm_lib.evaluation.explorer import Explorer
from speechlm_lib.evaluation.suite import set_keywords

factories = {}
for spec in specs:
    if spec.missing() is None and spec.system in ("speechlm", "stage1_ctc", "whisper") and not spec.with_list:
        options = {**spec.options, "shared": SHARED} if spec.system == "speechlm" else spec.options
        factories[spec.label] = (lambda s=spec, o=options: SYSTEMS.build(s.system, **o))
seen = {(name, label): e.records for (label, name), e in evals.items() if label in factories}
explorer = Explorer(test_sets, factories, keywords=set_keywords(test_sets["synthetic"])[:5], records=seen)
explorer.widget"""),
("md", """## Recording the results"""),
("result", """flat = {f"{label}|{name}|{k}": v for (label, name), e in evals.items()
        for k, v in e.row().items() if isinstance(v, (int, float))}
if ratio is not None:
    flat["speed_ratio_speechlm_to_faster_whisper"] = ratio
flat.update({f"real|{row['system']}|{k}": v for row in real_rows for k, v in row.items() if isinstance(v, float)})
path = results.record("stage5_evaluation", flat, seconds=time.time() - started, replace=True)  # this run's figures only
print(f"recorded {len(flat)} figures in {path}")
course.note()"""),
]


def build(path: Path) -> Path:
    return build_notebook(CELLS, path, "05")


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "notebooks" / "05_evaluation.ipynb"
    build(out)
    print(f"wrote {out}")
