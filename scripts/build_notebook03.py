"""Write notebooks/03_lora_multitask.ipynb (committed without outputs): python scripts/build_notebook03.py"""
from pathlib import Path

from speechlm_lib.publish import build_notebook


def M(src):
    return ("md", src)


def C(src):
    return ("code", src)


def R(src):
    """A result cell: tagged, so the tests check it says what its numbers mean."""
    return ("result", src)


cells = [
M("""# 03 · LoRA and multitask instruction tuning: the LLM starts to listen

Stage 2 built a speech-LLM in which only a small projector learned: the encoder and the LLM stayed frozen. The
reference run showed what that buys and where it stops (the numbers are read from `runs/cpu/results.json` below): the
frozen SmolLM2 copies the projector's tokens and adds nothing of its own, so the speech-LLM is no better than the
projector alone.

This notebook lets the LLM itself learn, cheaply, and makes one model do several jobs:

* **LoRA** (Hu et al. 2021; used on the LLM's attention by Fathullah et al. and by SALM): next to each frozen weight
  matrix a low-rank update trains, a fraction of a percent of the parameters. The LLM loss now has exact gradients
  into the LLM, so its knowledge of language can repair what the projector mishears.
* **Multitask instruction tuning** (SALM; SLM): English transcription, German transcription and English→German
  speech translation from the same recordings, the task chosen only by the instruction in the prompt.
* **Instruction following** (SLM): paraphrases never seen in training, and two tasks never trained at all.
* **The price**: what training on speech costs the LLM as a text model, with the adapters on and off."""),
C("""import time

from speechlm_lib import config, course, results
from speechlm_lib.recipes.stage3_lora import Stage3Config

PROFILE = course.start()  # profile, torch threads ($SPEECHLM_THREADS), figure style
cfg = Stage3Config.preset(PROFILE)  # configs/stage3_lora/<profile>.yaml
SMOKE = PROFILE == "smoke"
print(f"LoRA r={cfg.lora.r} on {', '.join(cfg.lora.target_modules)}, tasks {cfg.tasks}, "
      f"{cfg.train.max_steps} updates of {cfg.data.batch_size}")"""),
M("""## Where stage 2 left off

The reference run's figures, from the committed `runs/cpu/results.json` (produced by
`benchmarks/bench_speechlm.py --profile cpu` on the project's 2-core machine):"""),
C("""reference = results.load("cpu")["stages"]
stage2 = reference.get("stage2_speechlm_bench", {}).get("metrics", {})
for key, what in [("test_wer", "speech-LLM (frozen LLM + ctc projector), test WER"),
                  ("ctc_projector_test_wer", "the projector alone (best path, no LLM), test WER"),
                  ("whisper_test_wer", "the complete Whisper tiny.en, test WER")]:
    if key in stage2:
        print(f"{what:<55} {stage2[key]:.1%}")"""),
M("""## The model from notebook 02

`load_stage2` reads the folder notebook 02 saved (`runs/<profile>/stage2_speechlm`: the projector's weights and
a file naming the frozen parts). Its prompt demonstrations are dropped: they taught a *frozen* LLM to copy, and
here the adapters learn the task instead, so every example gets a short prompt."""),
C("""from speechlm_lib.recipes.stage3_lora import load_stage2

model = load_stage2(cfg)
counts = model.parameter_counts()
print({part: f"{c['total'] / 1e6:.1f} M" for part, c in counts.items() if part != "all"})"""),
M("""## LoRA, from scratch

A linear layer computes $y = xW^\\top$ with a frozen $W$ of shape (out, in). LoRA adds a trainable update of rank
$r$, factored as $B A$ with $A$ (r, in) and $B$ (out, r):

$$y = xW^\\top + \\tfrac{\\alpha}{r}\\, x A^\\top B^\\top .$$

$B$ starts at zero, so training starts from exactly the frozen LLM. Why attention (`q_proj`, `k_proj`, `v_proj`,
`o_proj`)? That is where the LLM decides which earlier positions to read: the audio tokens are new kind of input,
and the query/key/value maps are what must learn to attend to them. Rank buys capacity linearly: each adapted
matrix costs $r \\cdot (\\text{in} + \\text{out})$ parameters instead of $\\text{in} \\cdot \\text{out}$.

Here is the formula as a module, wrapped around a copy of the LLM's first query projection:"""),
C("""import copy

import torch

from speechlm_lib.models.lora import LowRankLinear

q_proj = model.llm.get_decoder().layers[0].self_attn.q_proj
layer = LowRankLinear(copy.deepcopy(q_proj).float(), r=8, alpha=16.0)
x = torch.randn(2, 5, q_proj.in_features)
print("at the start the output is the frozen layer's:", torch.allclose(layer(x), layer.base(x)))
print(f"frozen W: {layer.base.weight.numel():,} parameters; A and B: {layer.A.numel() + layer.B.numel():,}")"""),
M("""What the rank costs over the whole LLM (every attention projection of every layer):"""),
C("""import pandas as pd

shapes = [(m.in_features, m.out_features) for n, m in model.llm.named_modules()
          if n.rsplit(".", 1)[-1] in cfg.lora.target_modules]
llm_params = counts["llm"]["total"]
pd.DataFrame([{"rank r": r, "adapter parameters": sum(r * (i + o) for i, o in shapes),
               "share of the LLM": f"{sum(r * (i + o) for i, o in shapes) / llm_params:.2%}"} for r in (2, 8, 32)])"""),
M("""What the rank buys is an empirical question: the reference run trained each rank for the same 60 updates on
the same pairs (`benchmarks/bench_stage3.py --profile cpu --ranks 0 2 8 32 --rank-steps 60`; r = 0 is stage 2 as
it is). This notebook does not repeat it, which would take several minutes a rank; it quotes the measurement:"""),
C("""ranks = {r: course.reference("stage3_rank_ablation", f"rank_{r}") for r in (0, 2, 8, 32)}
if any(ranks.values()):
    display(pd.DataFrame([{"rank r": r, "dev WER": row.get("dev_wer"), "s / update": row.get("seconds_per_update"),
                           "trainable LLM parameters": row.get("trainable")} for r, row in ranks.items() if row]))
else:
    print("the rank ablation has not been measured on the reference profile yet")"""),
M("""The next cell swaps our teaching layer for peft's, which does the same arithmetic inside every targeted module
(`models/lora.py`). The adapters are injected into the LLM's own modules, so everything stage 2 built keeps
working: the prefix cache, `generate`, and the decoding that checks the projector's draft."""),
C("""from speechlm_lib.recipes.stage3_lora import add_adapters

counts = add_adapters(cfg, model)
pd.DataFrame({part: {"total": c["total"], "trainable": c["trainable"]} for part, c in counts.items()
              if part != "all"}).T"""),
M("""## Tasks, chosen by the instruction

Each task says which recordings it reads, the answer it wants and how it is scored (`data/tasks.py`). Training
samples one of several paraphrases per example; the **held-out** paraphrases and the two **zero-shot** tasks
(`caps`, `names`) are never trained, to test whether the model follows instructions it never saw."""),
C("""from speechlm_lib.data.tasks import TASKS

pd.DataFrame([{"task": t.name, "audio": t.language, "metric": t.metric, "trained": t.trained,
               "training instructions": " | ".join(t.train), "held out": " | ".join(t.held_out)}
              for t in map(TASKS.build, TASKS.names())])"""),
C("""from collections import Counter

from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Report
from speechlm_lib.recipes.stage3_lora import load_splits, make_task_dataset

splits = load_splits(cfg)
cache = FeatureCache.for_encoder(model.encoder)
report = Report()
train_ds = make_task_dataset(cfg, model, splits["train"], cfg.tasks, cache=cache, report=report)
print("training pairs per task:", dict(Counter(train_ds.task_names())))
print(f"left out: {len(report.skipped)} (utterance, task) pairs without an answer, e.g. {report.skipped[:1]}")"""),
M("""One training example, token by token: the prompt (instruction, then the audio embeddings) is not in the loss;
the answer and the end-of-turn token are."""),
C("""i = train_ds.task_names().index("ast_de") if "ast_de" in train_ds.task_names() else 0
item = train_ds[i]
utt = train_ds.utts[i]
for segment, text, in_loss in model.prompts.explain(item["text"], n_audio=max(1, int(utt.duration * model.token_rate)),
                                                    instruction=train_ds.instructions[id(utt)]):
    print(f"{segment:>7} {'LOSS' if in_loss else '    '} {text!r}")"""),
M("""## The problem to solve: the projector is nearly right on its own training voices

Adapters learn from the tokens the projector gives them. On the training utterances the stage-2 projector has
seen, those tokens are almost correct, so adapters trained on them learn to *copy* and never meet the errors they
will have to repair on new voices. Stage 3 therefore draws each training token from the projector's posterior at
a temperature $T$ (`ExposureConfig.sample_temperature`) instead of taking the best one: the training tokens then
carry errors like the test tokens do. Compare the projector's own WER:"""),
R("""from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
from speechlm_lib.recipes.stage3_lora import projector_wer

n = 16 if SMOKE else 200
seen = SpeechLMDataset([u for u in splits["train"] if u.language == "en"][:n], model.encoder, model.prompts, cache=cache)
unseen = SpeechLMDataset([u for u in splits["dev"] if u.language == "en"][:n], model.encoder, model.prompts, cache=cache)
T = cfg.exposure.sample_temperature
display(pd.DataFrame([{"tokens": "training voices, best path", "WER": projector_wer(model, seen)},
                      {"tokens": f"training voices, drawn at T={T}", "WER": projector_wer(model, seen, T)},
                      {"tokens": "unseen voices (dev), best path", "WER": projector_wer(model, unseen)}]).round(3))
course.note(("training voices, best path", "stage3_lora_bench", "projector_train_wer_best", "%"),
            ("drawn", "stage3_lora_bench", "projector_train_wer_drawn", "%"), ("unseen voices", "stage3_lora_bench", "projector_dev_wer", "%"))"""),
M("""## Training

The same generic `Trainer` as every stage; dev WER of English transcription at each evaluation, and the adapters
of the best evaluation are kept (before training counts too)."""),
R("""from speechlm_lib.recipes.stage3_lora import train_lora
from speechlm_lib.training.callbacks import LivePlot

out_dir = config.runs_dir() / PROFILE / "stage3_lora"
start = time.time()
result = train_lora(cfg, model, train_ds, dev=splits["dev"], cache=cache, callbacks=[LivePlot()], output_dir=out_dir)
print(f"{result['final']['step']} updates in {result['train_seconds']:.0f} s "
      f"({result['samples_per_second']:.2f} samples/s) + {result['eval_seconds']:.0f} s on dev; "
      f"kept step {result.get('best', {}).get('step')}; saved to {out_dir}")
course.note(("updates", "stage3_lora_bench", "steps", ""), ("training time", "stage3_lora_bench", "train_seconds", "s"))"""),
M("""## Every task, scored by its own metric

English and German transcription by WER, translation by BLEU and chrF (sacrebleu), on the test split: voices
and names never heard in training."""),
R("""from speechlm_lib.recipes.stage3_lora import evaluate_tasks

scores = evaluate_tasks(cfg, model, splits["test"], cache=cache)
table = pd.DataFrame({name: {k: v for k, v in s.items() if isinstance(v, (int, float))} for name, s in scores.items()}).T
display(table.round(3))
course.note(("English WER", "stage3_lora_bench", "asr_en_wer", "%"), ("German WER", "stage3_lora_bench", "asr_de_wer", "%"),
            ("English->German BLEU", "stage3_lora_bench", "ast_de_bleu", ""))"""),
M("""Beside it, on the same English test utterances: the projector alone, and the complete Whisper tiny.en whose
encoder the speech-LLM borrows."""),
R("""from speechlm_lib.recipes.stage3_lora import whisper_wer

test_en = [u for u in splits["test"] if u.language == "en"][: cfg.data.test_limit]
test_ds = SpeechLMDataset(test_en, model.encoder, model.prompts, cache=cache)
compare = pd.DataFrame([
    {"system": "stage 3: LoRA speech-LLM", "English test WER": scores["asr_en"]["wer"]},
    {"system": "the projector alone", "English test WER": projector_wer(model, test_ds)},
    {"system": "Whisper tiny.en (complete)", "English test WER": whisper_wer(test_en)["wer"]},
])
display(compare.round(3))
course.note(("stage 3", "stage3_lora_bench", "asr_en_wer", "%"), ("the projector alone", "stage3_lora_bench", "projector_test_wer", "%"),
            ("Whisper tiny.en", "stage3_lora_bench", "whisper_test_wer", "%"))"""),
M("""Hypotheses next to references, a few per task:"""),
R("""for name, s in scores.items():
    print(f"== {name}")
    for ref, hyp in list(zip(s["refs"], s["hyps"]))[:3]:
        print(f"   REF {ref}\\n   HYP {course.clean(hyp)}")
course.note()"""),
M("""## Real speech

A model trained only on eSpeak voices meets real, non-native read speech (speechocean762, held-out speakers) —
the same utterances for the speech-LLM and for the complete Whisper tiny.en."""),
R("""from speechlm_lib.recipes.stage3_lora import real_speech_test, score_task

real = real_speech_test(limit=8 if SMOKE else 100)
if not real:
    print("speechocean762 is absent (../shared/data/speechocean762): this section is skipped.")
else:
    mine = score_task(model, TASKS.build("asr_en"), real, cfg.decode)
    theirs = whisper_wer(real)
    print(f"{len(real)} utterances of held-out speakers: speech-LLM WER {mine['wer']:.1%}, "
          f"Whisper tiny.en WER {theirs['wer']:.1%}")
    for u, hyp in list(zip(real, mine["hyps"]))[:3]:
        print(f"   REF {u.text}\\n   HYP {course.clean(hyp)}")
course.note(("real speech, stage 3", "stage3_lora_bench", "real_stage3_wer", "%"), ("Whisper tiny.en", "stage3_lora_bench", "real_whisper_wer", "%"))"""),
M("""## What the speech training costs the LLM as a text model

The same text-only questions (`data/text_checks.py`: 50 in the cpu profile) and the perplexity of held-out plain text, with the
adapters on and off (off is the LLM before this notebook)."""),
R("""from speechlm_lib.experiments.text_ability import text_ability_on_and_off

ability = text_ability_on_and_off(model, questions=cfg.text_questions)
table = pd.DataFrame({side: {f"QA accuracy ({cfg.text_questions} questions)": a["qa_accuracy"],
                             "perplexity, held-out text": a["perplexity"]} for side, a in ability.items()}).round(3)
display(table)
course.note(("QA accuracy, adapters on", "stage3_lora_bench", "qa_accuracy_adapters_on", "%"),
            ("off", "stage3_lora_bench", "qa_accuracy_adapters_off", "%"))"""),
M("""## Recording the results"""),
R("""flat = {f"{name}_{k}": v for name, s in scores.items() for k, v in s.items() if isinstance(v, (int, float))}
flat.update(train_seconds=result["train_seconds"], samples_per_second=result["samples_per_second"],
            trainable_parameters=counts["all"]["trainable"],
            qa_accuracy_adapters_on=ability["adapters_on"]["qa_accuracy"],
            qa_accuracy_adapters_off=ability["adapters_off"]["qa_accuracy"],
            perplexity_adapters_on=ability["adapters_on"]["perplexity"],
            perplexity_adapters_off=ability["adapters_off"]["perplexity"])
path = results.record("stage3_lora", flat, seconds=result["train_seconds"], config=cfg.to_dict())
print(f"recorded {len(flat)} figures in {path}")
course.note()"""),
M("""## Where this stands

The cpu reference run's figures (`benchmarks/bench_stage3.py --profile cpu`, from `runs/cpu/results.json`) with
the targets the project set; docs/stage3_findings.md has every experiment behind the preset and its command."""),
C("""bench = reference.get("stage3_lora_bench", {}).get("metrics", {})
if not bench:
    print("No cpu reference run recorded yet: run  .venv/bin/python benchmarks/bench_stage3.py --profile cpu")
for key, what in [("asr_en_wer", "English test WER (target <= 15 %)"), ("projector_test_wer", "the projector alone"),
                  ("asr_de_wer", "German test WER (target <= 20 %)"), ("ast_de_bleu", "English->German BLEU (target >= 30)"),
                  ("train_seconds", "training seconds (target <= 600)")]:
    if key in bench:
        print(f"{what:<40} {bench[key]:.3f}")"""),
]
if __name__ == "__main__":
    print(build_notebook(cells, Path(__file__).resolve().parent.parent / "notebooks" / "03_lora_multitask.ipynb", "03"))
