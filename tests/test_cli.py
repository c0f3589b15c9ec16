"""The ``speechlm`` command end to end, in subprocesses, on the smoke preset with tiny random models
(a 2-layer Llama, a tiny wav2vec2) saved to folders and a manifest folder of tones: exit codes,
outputs, and the error text for bad arguments. Data sources and chunking are checked in process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import write_tone
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["hello world", "the quick brown fox", "you are tiny", "transcribe the audio"]


def env_for(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SPEECHLM_PROFILE": "smoke",
            "SPEECHLM_CACHE": str(tmp / "cache"), "SPEECHLM_RUNS": str(tmp / "runs"),
            "SPEECHLM_DATA": str(tmp / "data"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def cli(tmp: Path, *args, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechlm_lib", *map(str, args)], cwd=ROOT, env=env_for(tmp),
                          capture_output=True, text=True, timeout=timeout)


def make_manifest_folder(folder: Path, n: int = 16, speakers: int = 4) -> Path:
    """`n` one-second flac tones with transcripts, `speakers` speakers, one transcripts.jsonl."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        write_tone(folder / "audio" / f"u{i:02d}.flac", seconds=1.0, freq=200 + 40 * i, subtype="PCM_16")
        rows.append({"id": f"u{i:02d}", "audio": f"audio/u{i:02d}.flac", "text": TEXTS[i % 4],
                     "speaker": f"s{i % speakers}", "duration": 1.0})
    (folder / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny models saved to folders, the manifest folder, and the --set list that uses them."""
    from speechlm_lib.models.tiny_models import save_tiny_llm, save_tiny_wav2vec2

    tmp = tmp_path_factory.mktemp("cli")
    llm, enc = save_tiny_llm(tmp / "llm"), save_tiny_wav2vec2(tmp / "w2v")
    data = make_manifest_folder(tmp / "mydata")
    settings = ["model.encoder=wav2vec2", f"model.encoder_source={enc}", f"model.llm={llm}", "model.stride=4",
                "model.projector_kwargs={'hidden': 32, 'hard': True, 'context': 1}", "model.prompt_examples=2",
                "data.source.kind=manifest", f"data.source.name={data}",
                "data.source.split_by_speaker={'train': 0.5, 'dev': 0.25, 'test': 0.25}"]
    return {"tmp": tmp, "data": data, "sets": [a for s in settings for a in ("--set", s)]}


@pytest.fixture(scope="module")
def run(tiny):
    """`speechlm train stage2` on the manifest folder (smoke preset: CTC pre-alignment, example choice, 2 updates)."""
    out = tiny["tmp"] / "run"
    proc = cli(tiny["tmp"], "train", "stage2", "--preset", "smoke", "--out", out, *tiny["sets"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": out, "proc": proc}


# ----- help and bad arguments ---------------------------------------------------------------------
def test_help_lists_the_stages_presets_and_settings(tiny):
    top = cli(tiny["tmp"], "--help")
    assert top.returncode == 0
    for word in ("corpus", "train", "evaluate", "transcribe", "export", "stage1", "stage2", "presets: cpu, gpu, smoke"):
        assert word in top.stdout
    stage2 = cli(tiny["tmp"], "train", "stage2", "--help")
    assert stage2.returncode == 0
    assert "presets (configs/stage2_align/): cpu" in stage2.stdout
    assert "data.source.kind = 'synthetic'  # synthetic | manifest | hf" in stage2.stdout
    assert "train.max_steps = 2" in stage2.stdout  # the smoke preset's value ($SPEECHLM_PROFILE=smoke)


@pytest.mark.parametrize("args, words", [
    (["train", "stage9"], "invalid choice: 'stage9'"),
    (["train", "stage2", "--set", "train.max_step=3"], "unknown setting 'train.max_step'"),
    (["train", "stage2", "--config", "nowhere.yaml"], "nowhere.yaml: no such config file"),
    (["train", "stage2", "--set", "data.source.kind=ftp"], "unknown data source kind 'ftp'; known: hf, manifest"),
    (["evaluate", "--checkpoint", "{tmp}"], "not a saved SpeechLM (no speechlm.json"),
    (["transcribe", "--checkpoint", "{tmp}/nothing-here", "{tmp}/mydata/audio"], "{tmp}/nothing-here: no such"),
    (["export", "--checkpoint", "{tmp}/mydata", "--out", "{tmp}/x"], "not a saved SpeechLM"),
])
def test_bad_arguments_end_with_one_clear_line_and_exit_2(tiny, args, words):
    tmp = tiny["tmp"]
    args = [a.format(tmp=tmp) for a in args]
    if args[0] == "train":  # the tiny models first, so the setting under test comes last and wins
        args = args[:2] + tiny["sets"] + args[2:]
    proc = cli(tmp, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert words.format(tmp=tmp) in proc.stderr
    assert "Traceback" not in proc.stderr


# ----- train, evaluate, transcribe, export ---------------------------------------------------------
def test_train_stage3_on_top_of_the_stage2_run(run, tiny):
    """`speechlm train stage3` adds LoRA to the stage-2 run's model, trains on the manifest folder (English ASR:
    it has no German and no translations) and saves adapters a fresh process can load."""
    out = tiny["tmp"] / "run3"
    src = [a for s in ("data.source.kind=manifest", f"data.source.name={tiny['data']}",
                       "data.source.splits={}", "data.source.split_by_speaker={'train': 0.5, 'dev': 0.25, 'test': 0.25}",
                       f"init_from={run['dir'] / 'model'}", "tasks={'asr_en': 1.0}", "eval_tasks=('asr_en',)",
                       "lora.r=2", "text_questions=0") for a in ("--set", s)]
    proc = cli(tiny["tmp"], "train", "stage3", "--preset", "smoke", "--out", out, *src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("stage3: English test WER")
    assert (out / "model" / "adapter" / "adapter_config.json").is_file()
    metrics = json.loads((out / "results.json").read_text())["stages"]["stage3"]["metrics"]
    assert metrics["steps"] == 3 and 0 <= metrics["asr_en_wer"]
    missing = cli(tiny["tmp"], "train", "stage3", "--preset", "smoke", "--out", tiny["tmp"] / "run3b",
                  "--set", f"init_from={tiny['tmp'] / 'nowhere'}")
    assert missing.returncode == 2 and "no stage-2 model" in missing.stderr


def test_train_stage3_realigned_on_a_new_corpus(run, tiny, tmp_path):
    """A stage-3 config with `realign` (the cpu-speechocean recipe): the projector re-learns by CTC on a corpus
    written in capitals and read in sentence case, its vocabulary grown to the new spellings, then LoRA trains."""
    from dataclasses import replace

    from speechlm_lib.models.speechlm import SpeechLM
    from speechlm_lib.recipes.stage3_lora import Stage3Config
    from speechlm_lib.training.trainer import TrainConfig

    caps = tmp_path / "caps"
    caps.mkdir()
    rows = [json.loads(line) for line in (tiny["data"] / "transcripts.jsonl").read_text().splitlines()]
    rows = [{**r, "text": r["text"].upper(), "audio": str(tiny["data"] / r["audio"])} for r in rows]
    (caps / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = replace(Stage3Config.preset("smoke"), realign=TrainConfig(max_steps=2, eval_every=0, lr=1e-3),
                  realign_batch_size=4)
    src = [a for s in ("data.source.kind=manifest", f"data.source.name={caps}", "data.source.splits={}",
                       "data.source.split_by_speaker={'train': 0.5, 'dev': 0.25, 'test': 0.25}",
                       "data.source.text_case=sentence", f"init_from={run['dir'] / 'model'}",
                       "tasks={'asr_en': 1.0}", "eval_tasks=('asr_en',)", "lora.r=2") for a in ("--set", s)]
    out = tmp_path / "run3r"
    proc = cli(tiny["tmp"], "train", "stage3", "--config", cfg.save(tmp_path / "realign.yaml"), "--out", out, *src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "results.json").read_text())["stages"]["stage3"]["metrics"]
    assert metrics["realign_steps"] == 2 and metrics["realign_added_tokens"] > 0
    model = SpeechLM.from_pretrained(out / "model")
    capital = model.prompts.target("Hello world")[0]  # "Hello": a piece the stage-2 run never emitted
    assert capital in model.projector.vocab.tolist()
    assert capital not in SpeechLM.from_pretrained(run["dir"] / "model").projector.vocab.tolist()


def test_train_stage2_on_a_manifest_folder_split_by_speaker(run, tiny):
    d = run["dir"]
    assert {"config.yaml", "results.json", "run.json", "test_transcripts.jsonl", "model"} <= {p.name for p in d.iterdir()}
    entry = json.loads((d / "results.json").read_text())["stages"]["stage2"]
    m = entry["metrics"]
    assert m["steps"] == 2 and m["train_utterances"] == 8 and m["test_utterances"] == 4 and m["replicas"] == 1
    assert 0 <= m["test_wer"] and entry["command"].startswith("speechlm train stage2 --preset smoke")
    assert entry["data"].startswith(f"manifest: {tiny['data']}, split by speaker")
    assert run["proc"].stderr.strip().splitlines()[-1].startswith("stage2: test WER")  # the one-line summary
    assert f"model -> {d / 'model'}" in run["proc"].stderr
    from speechlm_lib.recipes.stage2_align import Stage2Config, load_splits

    cfg = Stage2Config.from_file(d / "config.yaml")
    assert cfg.data.source.kind == "manifest" and cfg.train.max_steps == 2
    splits = load_splits(cfg)
    speakers = {k: {u.speaker for u in v} for k, v in splits.items()}
    assert not (speakers["train"] & speakers["test"]) and not (speakers["dev"] & speakers["test"])
    hyps = [json.loads(line) for line in (d / "test_transcripts.jsonl").read_text().splitlines()]
    assert [h["id"] for h in hyps] == [u.id for u in splits["test"]]


def test_evaluate_rescores_the_run_with_its_own_config(run, tiny):
    proc = cli(tiny["tmp"], "evaluate", "--checkpoint", run["dir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((run["dir"] / "eval_test.json").read_text())
    trained = json.loads((run["dir"] / "results.json").read_text())["stages"]["stage2"]["metrics"]
    assert got["utterances"] == 4 and got["wer"] == pytest.approx(trained["test_wer"], abs=1e-4)
    assert "evaluate: test WER" in proc.stderr.strip().splitlines()[-1]


def test_transcribe_folders_and_files_skips_bad_ones_and_splits_long_audio(run, tiny, tmp_path):
    audio = tmp_path / "in"
    (audio / "sub").mkdir(parents=True)
    write_tone(audio / "a.wav", 1.0)
    write_tone(audio / "sub" / "b.flac", 1.5, freq=300)
    write_tone(audio / "c.ogg", 1.0, subtype="VORBIS", freq=500)
    long = np.concatenate([0.3 * np.sin(np.arange(16000 * 50) * 0.1), np.zeros(8000), np.ones(16000 * 10) * 0.1])
    sf.write(audio / "long.wav", long.astype(np.float32), 16000)
    (audio / "broken.wav").write_bytes(b"RIFF not really a wav")
    (audio / "notes.txt").write_text("not audio: ignored in a folder")
    out = tmp_path / "t.jsonl"
    proc = cli(tiny["tmp"], "transcribe", audio, tmp_path / "missing.flac", "--checkpoint", run["dir"] / "model",
               "--out", out, "--batch-size", "2", "--keywords", "fox, dog", "--chunk-seconds", "20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a", "sub/b", "c", "long"}
    assert rows["sub/b"]["seconds"] == pytest.approx(1.5) and rows["a"]["chunks"] == 1
    assert rows["long"]["chunks"] == 4 and rows["long"]["seconds"] == pytest.approx(60.5)
    assert all(set(r) == {"id", "audio", "text", "seconds", "chunks"} for r in rows.values())
    assert f"skipped {audio / 'broken.wav'}: unreadable or corrupt audio" in proc.stderr
    assert f"skipped {tmp_path / 'missing.flac'}: no such file or folder" in proc.stderr
    assert "transcribe: 4 file(s)" in proc.stderr and "skipped 2" in proc.stderr
    text = tmp_path / "t.txt"
    again = cli(tiny["tmp"], "transcribe", audio / "a.wav", "--checkpoint", run["dir"], "--out", text,
                "--keywords", "fox, dog", "--dtype", "float32")  # the dtype it was saved in: the same transcript
    assert again.returncode == 0 and text.read_text() == rows["a"]["text"] + "\n"  # plain text, same transcript


def test_transcribe_rescore_lets_the_llm_choose_among_the_nbest(run, tiny, tmp_path):
    write_tone(tmp_path / "a.wav", 1.0)
    write_tone(tmp_path / "b.wav", 1.5, freq=300)
    examples = tmp_path / "examples.txt"
    examples.write_text("hello world\nthe quick brown fox\n")
    out = tmp_path / "r.jsonl"
    proc = cli(tiny["tmp"], "transcribe", tmp_path / "a.wav", tmp_path / "b.wav", "--checkpoint", run["dir"],
               "--rescore", "--lm-examples", examples, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["id"] for r in map(json.loads, out.read_text().splitlines())] == ["a", "b"]
    both = cli(tiny["tmp"], "transcribe", tmp_path / "a.wav", "--checkpoint", run["dir"], "--rescore",
               "--keywords", "fox")
    assert both.returncode == 2 and "--rescore does not use --keywords" in both.stderr
    missing = cli(tiny["tmp"], "transcribe", tmp_path / "a.wav", "--checkpoint", run["dir"], "--rescore",
                  "--lm-examples", tmp_path / "nope.txt")
    assert missing.returncode == 2 and f"{tmp_path / 'nope.txt'}: no such file" in missing.stderr


def test_transcribe_snaps_to_the_keywords_but_never_a_word_heard_in_training(run, tiny, tmp_path):
    from speechlm_lib.cli.transcribe import _snapped
    from speechlm_lib.decoding.list_snap import ListSnapConfig, load_training_words

    known = load_training_words(run["dir"] / "model")  # written by `speechlm train stage2`
    assert known and {w for t in TEXTS for w in t.lower().replace(".", "").split()} >= known
    heard = next(w for w in sorted(known) if len(w) > 4)
    snap = (ListSnapConfig(min_score=0.6, names_only=False), known)
    texts, swaps = _snapped([f"{heard} met Krolovre", "nothing here"], ["Crolovre", heard[:-1] + "x"], snap)
    assert texts == [f"{heard} met Crolovre", "nothing here"] and swaps == 1
    write_tone(tmp_path / "a.wav", 1.0)
    ok = cli(tiny["tmp"], "transcribe", tmp_path / "a.wav", "--checkpoint", run["dir"], "--keywords", "Crolovre",
             "--snap", "0.7")
    assert ok.returncode == 0 and "snapped to the list" in ok.stderr.strip().splitlines()[-1], ok.stderr[-2000:]
    for args, words in ((["--snap", "0.7"], "--snap needs --keywords"),
                        (["--snap", "1.5", "--keywords", "A"], "--snap is a similarity"),
                        (["--snap", "0.7", "--keywords", "A", "--known-words", tmp_path / "nope.txt"], "no such file"),
                        (["--place", "0.5"], "--place needs --keywords"),
                        (["--place", "2", "--keywords", "A"], "--place is a similarity")):
        bad = cli(tiny["tmp"], "transcribe", tmp_path / "a.wav", "--checkpoint", run["dir"], *args)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr[-1000:]


def test_transcribe_places_the_keywords_the_projector_heard(run, tiny, tmp_path):
    from speechlm_lib.cli.transcribe import _fixer
    from speechlm_lib.decoding.list_filter import spotted_waves
    from speechlm_lib.decoding.list_place import ListPlaceConfig
    from speechlm_lib.models.speechlm import SpeechLM

    model = SpeechLM.from_pretrained(run["dir"] / "model")
    waves = [0.3 * torch.sin(torch.arange(16000 * s) * f) for s, f in ((1, 0.1), (2, 0.05))]
    spotted = spotted_waves(model, waves, batch_size=1)
    assert len(spotted) == 2 and spotted[1].logp.shape[0] > spotted[0].logp.shape[0] > 0  # frames follow the audio
    counts = {}  # "tiny" is a training word, so the projector can spell it; a near-zero threshold places it
    anywhere = _fixer(model, ["tiny"], None, ListPlaceConfig(min_similarity=1e-30), None, 2, counts)
    assert anywhere(["", "tiny"], waves) == ["tiny", "tiny"] and counts == {"snapped": 0, "placed": 1}
    never = _fixer(model, ["tiny", "world"], None, ListPlaceConfig(min_similarity=1.0), None, 2, {})  # needs 2 > 1
    assert never(["", "hello"], waves) == ["", "hello"]
    write_tone(tmp_path / "a.wav", 1.0)
    ok = cli(tiny["tmp"], "transcribe", tmp_path / "a.wav", "--checkpoint", run["dir"], "--keywords", "tiny",
             "--snap", "0.7", "--place", "1e-30")
    assert ok.returncode == 0 and "placed where heard" in ok.stderr.strip().splitlines()[-1], ok.stderr[-2000:]
    assert "tiny" in json.loads(ok.stdout)["text"]  # placed (the random tiny LLM writes bytes around it)


def test_transcribe_with_only_bad_inputs_fails(run, tiny, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"nope")
    proc = cli(tiny["tmp"], "transcribe", tmp_path / "bad.wav", "--checkpoint", run["dir"])
    assert proc.returncode == 1 and "skipped 1" in proc.stderr and proc.stdout == ""


def test_export_writes_a_loadable_folder_with_a_model_card(run, tiny, tmp_path):
    out = tmp_path / "export"
    proc = cli(tiny["tmp"], "export", "--checkpoint", run["dir"], "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"speechlm.json", "trainable.safetensors", "config.yaml", "results.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    metrics = json.loads((run["dir"] / "results.json").read_text())["stages"]["stage2"]["metrics"]
    assert f"| test_wer | {metrics['test_wer']} |" in card and "speechlm train stage2 --preset smoke" in card
    assert "manifest: " in card and "pipeline_tag: automatic-speech-recognition" in card
    assert "local path" in proc.stderr  # the tiny parts are local folders: the export says it will not travel
    from speechlm_lib.models.speechlm import SpeechLM

    model = SpeechLM.from_pretrained(out)
    saved = load_file(str(run["dir"] / "model" / "trainable.safetensors"))
    for name, value in saved.items():
        assert torch.equal(model.state_dict()[name], value)


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    from speechlm_lib import export

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload", kw))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = export.push_to_hub(tmp_path, "me/speechlm-test", private=True)
    assert url.endswith("me/speechlm-test/commit/1")
    assert calls[1] == ("create", "me/speechlm-test", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][1]["folder_path"] == str(tmp_path) and calls[2][1]["repo_id"] == "me/speechlm-test"


def test_from_pretrained_downloads_a_repo_id(tmp_path, monkeypatch):
    import huggingface_hub

    from speechlm_lib.models import speechlm

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(tmp_path))
    with pytest.raises(FileNotFoundError, match="speechlm.json"):  # the (empty) download is then read as a folder
        speechlm.SpeechLM.from_pretrained("me/speechlm-test")
    assert asked == ["me/speechlm-test"]


def test_corpus_command_builds_a_tiny_synthetic_corpus(tmp_path):
    proc = cli(tmp_path, "corpus", "--preset", "smoke", "--set", "sizes=(3, 1, 1)", "--set", "speakers=(1, 1, 1)",
               "--set", "german_share=0", "--set", "workers=1", "--out", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {s: (tmp_path / "c" / f"{s}.jsonl").read_text().splitlines() for s in ("train", "dev", "test")}
    assert [len(v) for v in lines.values()] == [3, 1, 1]
    assert proc.stderr.strip().splitlines()[-1].startswith("corpus smoke: train 3, dev 1, test 1 utterances")


# ----- scale-out: two processes over gloo, through the accelerate config file ------------------------
def launch(tiny, out: Path, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", ROOT / "configs/accelerate/ddp.yaml",
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
           "-m", "speechlm_lib", "train", "stage2", "--preset", "smoke", "--out", out, *tiny["sets"],
           "--set", "model.projector=linear", "--set", "model.projector_kwargs={'hidden': 32}", "--set", "pretrain=None",
           "--set", "keep_best=False", "--set", "model.prompt_examples=0", "--set", "train.max_steps=4",
           "--set", "train.save_every=2", "--set", "train.keep_checkpoints=0", "--set", "train.eval_every=0",
           "--set", "data.batch_size=2", *extra]
    env = {**env_for(tiny["tmp"]), "ACCELERATE_LOG_LEVEL": "error"}
    return subprocess.run(list(map(str, cmd)), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_stage2_keeps_replicas_identical_and_resumes_exactly(tiny, tmp_path):
    out = tmp_path / "ddp"
    full = launch(tiny, out)
    assert full.returncode == 0, full.stderr[-4000:]
    metrics = json.loads((out / "results.json").read_text())["stages"]["stage2"]["metrics"]
    assert metrics["replicas"] == 2 and metrics["replicas_identical"] and metrics["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    first = load_file(str(out / "model" / "trainable.safetensors"))

    import shutil

    shutil.rmtree(out / "checkpoints" / "step_0000004")  # as if the run died after step 2
    resumed = launch(tiny, out, "--set", "train.resume=True")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    again = json.loads((out / "results.json").read_text())["stages"]["stage2"]["metrics"]
    assert again["replicas"] == 2 and again["replicas_identical"] and again["steps"] == 4
    second = load_file(str(out / "model" / "trainable.safetensors"))
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-5, atol=1e-6)
    init = launch(tiny, tmp_path / "other", "--set", "train.max_steps=2")  # and the weights did move with training
    assert init.returncode == 0
    two = load_file(str(tmp_path / "other" / "model" / "trainable.safetensors"))
    assert any(not torch.allclose(two[n], first[n]) for n in first)


@pytest.mark.parametrize("name, engine", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")])
def test_accelerate_config_files_load_with_accelerates_own_reader(name, engine):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.name == engine and cfg.num_processes == 8 and cfg.mixed_precision == "bf16"


def test_train_stage1_on_a_manifest_folder(tiny):
    out = tiny["tmp"] / "stage1"
    proc = cli(tiny["tmp"], "train", "stage1", "--preset", "smoke", "--out", out, "--set", "data.kind=manifest",
               "--set", f"data.name={tiny['data']}", "--set", "data.split_by_speaker={'train': 2, 'dev': 1, 'test': 1}",
               "--set", "train.max_steps=2", "--set", "train.log_with=None")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "results.json").read_text())["stages"]["stage1"]["metrics"]
    assert m["steps"] == 2 and "test_wer" in m
    assert {"config.json", "model.safetensors"} <= {p.name for p in (out / "model").iterdir()}
    assert proc.stderr.strip().splitlines()[-1].startswith("stage1: test WER")
