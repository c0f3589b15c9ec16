"""Bad input and faults, as a new user meets them: every case asserts its exact outcome.

Either the error names the file (or item) and the problem, or the bad item is skipped, counted
and named, and every good item comes out (kept == good rows in). The docstring of each test is
its row in ``docs/reliability.md``: first line the case, the line after ``->`` the outcome
(``python scripts/fault_table.py`` regenerates the table from this file and its test run).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from speechlm_lib.data import audio
from speechlm_lib.data.audio import AudioError, check_wave, load_audio
from speechlm_lib.data.ctc_dataset import CTCDataset
from speechlm_lib.data.feature_cache import FeatureCache, content_key, weights_fingerprint
from speechlm_lib.data.realdata import load_local_manifest
from speechlm_lib.data.records import Report, Utterance, read_manifest
from speechlm_lib.models import sources
from speechlm_lib.models.conformer import ConformerConfig, ConformerCTC
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.tiny_models import tiny_whisper
from speechlm_lib.models.vocab import VOCABS
from speechlm_lib.training.trainer import NonFiniteTrainingError, TrainConfig, Trainer
from speechlm_lib.training.utils import MANIFEST, latest_checkpoint, write_checkpoint_manifest


# ----------------------------------------------------------------------------- helpers
def wav(path, seconds=0.5, seed=0, samples=None, sr=16000, subtype="PCM_16"):
    n = samples if samples is not None else int(seconds * sr)
    sf.write(str(path), (np.random.RandomState(seed).randn(n) * 0.1).astype("float32"), sr, subtype=subtype)
    return str(path)


def utt(path, uid, text="hello world", duration=0.5):
    return Utterance(id=uid, audio=str(path), text=text, duration=duration)


def manifest(path, lines: list[bytes]):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def row(uid, audio_path="a.wav", text="hi"):
    return json.dumps({"id": uid, "audio": audio_path, "text": text}).encode()


@pytest.fixture(scope="module")
def encoder():
    return ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper()).eval()


@pytest.fixture
def vocab():
    return VOCABS.build("char")


# ----------------------------------------------------------------------------- audio files
def test_audio_clip_of_200_samples(tmp_path, vocab):
    """A clip of 200 samples (12.5 ms) in a stage-1 build.
    -> AudioError names the file and "too short"; the stage-1 build skips it and keeps the 2 good clips."""
    short = wav(tmp_path / "short.wav", samples=200)
    with pytest.raises(AudioError, match=r"short\.wav: too short: 200 samples"):
        load_audio(short)
    utts = [utt(wav(tmp_path / "a.wav"), "a"), utt(short, "s"), utt(wav(tmp_path / "b.wav", seed=1), "b")]
    ds = CTCDataset(utts, vocab, progress=False)
    assert [it.id for it in ds.items] == ["a", "b"]
    assert ds.report.audio.skipped == [("s", f"{short}: too short: 200 samples (12.5 ms); the minimum is 400 "
                                              "samples (25 ms)")]


def test_audio_dev_zero_is_never_read():
    """/dev/zero (an endless file) given as audio, to the loader and to the cache's hashing.
    -> AudioError "not a regular file (a device)" from a stat, before a byte is read: no hang."""
    with pytest.raises(AudioError, match=r"/dev/zero: not a regular file \(a device\)"):
        load_audio("/dev/zero")
    with pytest.raises(AudioError, match=r"/dev/zero: not a regular file"):
        content_key("/dev/zero")


def test_audio_fifo_is_never_opened(tmp_path):
    """A named pipe (FIFO) as an audio path.
    -> AudioError "not a regular file (a pipe)"; opening it (which would block) never happens."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match=r"pipe\.wav: not a regular file \(a pipe\)"):
        load_audio(fifo)


def test_audio_file_over_the_size_bound(tmp_path, monkeypatch):
    """An audio file larger than audio.MAX_FILE_BYTES.
    -> AudioError names the file and its byte count, before it is read or hashed."""
    path = wav(tmp_path / "big.wav", seconds=1.0)
    monkeypatch.setattr(audio, "MAX_FILE_BYTES", 1000)
    with pytest.raises(AudioError, match=r"big\.wav: 32044 bytes is over the 1000-byte limit"):
        load_audio(path)
    with pytest.raises(AudioError, match=r"big\.wav: 32044 bytes is over"):
        content_key(path)


def test_audio_empty_file_and_folder(tmp_path):
    """A 0-byte .wav, and a folder named like an audio file.
    -> AudioError "empty file (0 bytes)" / "not a regular file (a folder)", each naming the path."""
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(AudioError, match=r"empty\.wav: empty file \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match=r"dir\.wav: not a regular file \(a folder\)"):
        load_audio(tmp_path / "dir.wav")


def test_audio_garbage_bytes(tmp_path):
    """A .wav file holding random bytes.
    -> AudioError names the file: "unreadable or corrupt audio"."""
    (tmp_path / "junk.wav").write_bytes(os.urandom(3000))
    with pytest.raises(AudioError, match=r"junk\.wav: unreadable or corrupt audio"):
        load_audio(tmp_path / "junk.wav")


def test_audio_over_max_seconds_from_the_header(tmp_path):
    """A 3-s file where 2 s is the maximum.
    -> AudioError names the file and "duration 3.0 s is over the maximum of 2.0 s"."""
    path = wav(tmp_path / "long.wav", seconds=3.0)
    with pytest.raises(AudioError, match=r"long\.wav: duration 3\.0 s is over the maximum of 2\.0 s"):
        load_audio(path, max_seconds=2.0)


def test_audio_bulk_mix_of_bad_files(tmp_path, vocab):
    """A stage-1 build over 3 good clips and 4 bad ones (missing, NaN samples, /dev/zero, 0 bytes).
    -> 3 items out, each bad one skipped and named with its reason; kept + skipped == 7."""
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.full(800, np.nan, dtype="float32"), 16000, subtype="FLOAT")
    (tmp_path / "zero.wav").write_bytes(b"")
    good = [utt(wav(tmp_path / f"g{i}.wav", seed=i), f"g{i}") for i in range(3)]
    bad = [utt(tmp_path / "missing.wav", "m"), utt(nan, "n"), utt("/dev/zero", "z"), utt(tmp_path / "zero.wav", "e")]
    ds = CTCDataset([good[0], *bad[:2], good[1], *bad[2:], good[2]], vocab, progress=False)
    assert [it.id for it in ds.items] == ["g0", "g1", "g2"]
    reasons = dict(ds.report.audio.skipped)
    assert "file not found" in reasons["m"] and "NaN or inf" in reasons["n"]
    assert "not a regular file" in reasons["z"] and "empty file" in reasons["e"]
    assert ds.report.audio.kept + len(ds.report.audio.skipped) == 7


# ----------------------------------------------------------------------------- in-memory audio
def test_wave_nan_in_memory():
    """A waveform with one NaN sample passed in memory.
    -> AudioError names it and "NaN or inf" (a file with NaN gets the same answer)."""
    w = torch.zeros(1600)
    w[7] = float("nan")
    with pytest.raises(AudioError, match=r"mic-take-3: audio contains NaN or inf"):
        check_wave(w, "mic-take-3")


@pytest.mark.parametrize("wave,message", [
    (torch.zeros(0), "zero-length audio"),
    (torch.zeros(150), "too short: 150 samples"),
    (torch.zeros(2, 1600), r"expected a mono waveform of shape \(samples,\), got shape \(2, 1600\)"),
    (torch.zeros(16000 * 3), r"duration 3\.0 s is over the maximum of 2\.0 s"),
])
def test_wave_bad_shapes_and_lengths(wave, message):
    """In-memory waves that are empty, 150 samples, stereo (2, 1600), or 3 s with a 2-s maximum.
    -> AudioError naming the wave and the problem, exactly as for a file."""
    with pytest.raises(AudioError, match=f"take: {message}"):
        check_wave(wave, "take", max_seconds=2.0)


def test_wave_transcribe_keeps_good_inputs(tmp_path):
    """transcribe() on 2 good files, a missing file and an in-memory NaN wave.
    -> the 2 good transcripts equal those of the good files alone; the 2 bad are "" and named."""
    from speechlm_lib.decoding.generation import DecodeConfig, transcribe
    from speechlm_lib.models.speechlm import SpeechLM
    from speechlm_lib.models.tiny_models import tiny_llm

    llm, tok = tiny_llm()
    enc = ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper())
    model = SpeechLM(enc, llm, tok, projector_kwargs={"hidden": 32})
    cfg = DecodeConfig(max_new_tokens=4)
    good = [wav(tmp_path / "a.wav", 0.6), wav(tmp_path / "b.wav", 0.8, seed=1)]
    nan = ("nan-take", torch.full((1600,), float("nan")))
    alone = transcribe(model, good, cfg, progress=False)
    mixed = transcribe(model, [good[0], str(tmp_path / "gone.wav"), nan, good[1]], cfg, progress=False)
    assert [mixed.token_ids[0], mixed.token_ids[3]] == alone.token_ids
    assert mixed.texts[1] == mixed.texts[2] == ""
    assert mixed.skipped.kept == 2 and [i for i, _ in mixed.skipped.skipped] == [str(tmp_path / "gone.wav"),
                                                                                  "nan-take"]
    with pytest.raises(AudioError, match="nan-take: audio contains NaN"):  # nothing usable: an error
        transcribe(model, [nan], cfg, progress=False)


# ----------------------------------------------------------------------------- manifests
def test_manifest_one_non_utf8_byte(tmp_path):
    """A manifest whose line 2 of 3 holds the byte 0xff.
    -> rows 1 and 3 kept; line 2 skipped as "<file>:2", "not valid UTF-8 (byte 0xff ...)"."""
    m = manifest(tmp_path / "m.jsonl", [row("a"), row("b")[:-3] + b"\xff\"}", row("c")])
    rep = Report()
    assert [u.id for u in read_manifest(m, rep)] == ["a", "c"]
    assert rep.skipped == [(f"{m}:2", "not valid UTF-8 (byte 0xff at column 41)")] and rep.kept == 2


def test_manifest_utf8_bom(tmp_path):
    """A manifest saved with a UTF-8 byte-order mark (Windows editors).
    -> the BOM is ignored: all 2 rows kept, nothing skipped."""
    m = manifest(tmp_path / "m.jsonl", [b"\xef\xbb\xbf" + row("a"), row("b")])
    rep = Report()
    assert [u.id for u in read_manifest(m, rep)] == ["a", "b"] and rep.skipped == []


def test_manifest_null_and_non_string_fields(tmp_path):
    """Rows with "text": null, "text": 42, "audio": null, "duration": "abc", among 1 good row.
    -> each skipped and named by file:line with the field; never the transcript "None"."""
    bad = [{"audio": "a.wav", "text": None}, {"audio": "a.wav", "text": 42}, {"audio": None, "text": "x"},
           {"audio": "a.wav", "text": "x", "duration": "abc"}]
    m = manifest(tmp_path / "m.jsonl", [json.dumps(d).encode() for d in bad] + [row("ok")])
    rep = Report()
    assert [u.text for u in read_manifest(m, rep)] == ["hi"]
    assert [r for _, r in rep.skipped] == ["field 'text' is null, not a string",
                                           "field 'text' is a int ('42'), not a string",
                                           "field 'audio' is null, not a string",
                                           "field 'duration' is 'abc', not a finite number of seconds"]
    assert [i for i, _ in rep.skipped] == [f"{m}:{n}" for n in (1, 2, 3, 4)]


def test_manifest_duplicate_ids(tmp_path):
    """A manifest with id "a" on lines 1 and 3.
    -> line 3 skipped: "duplicate id 'a' (first on line 1)"; rows 1 and 2 kept."""
    m = manifest(tmp_path / "m.jsonl", [row("a", "1.wav"), row("b", "2.wav"), row("a", "3.wav")])
    rep = Report()
    assert [os.path.basename(u.audio) for u in read_manifest(m, rep)] == ["1.wav", "2.wav"]
    assert rep.skipped == [(f"{m}:3", "duplicate id 'a' (first on line 1)")]


def test_manifest_broken_json_lines(tmp_path):
    """Lines that are cut-off JSON, a JSON list, and an object without "text", around 2 good rows.
    -> 2 rows kept; 3 skipped, each named by file:line with its reason; blank lines ignored."""
    m = manifest(tmp_path / "m.jsonl", [row("a"), b'{"audio": "x.wav", "te', b"[1, 2]", b"",
                                        b'{"audio": "x.wav"}', row("b")])
    rep = Report()
    assert [u.id for u in read_manifest(m, rep)] == ["a", "b"]
    assert [(i.rsplit(":", 1)[1], r.split(" (")[0]) for i, r in rep.skipped] == [
        ("2", "not valid JSON"), ("3", "row is not a JSON object"), ("5", "missing field(s) text")]


def test_manifest_local_folder_with_bad_audio(tmp_path):
    """A local corpus folder whose manifest points at a good file, a missing one and /dev/zero.
    -> 1 utterance; the other 2 skipped with "file not found" / "not a regular file"."""
    wav(tmp_path / "ok.wav")
    manifest(tmp_path / "transcripts.jsonl", [row("ok", "ok.wav"), row("gone", "gone.wav"),
                                              row("dev", "/dev/zero")])
    rep = Report()
    assert [u.id for u in load_local_manifest(tmp_path, report=rep)] == ["ok"]
    assert [(i, r.split(": ", 1)[1]) for i, r in rep.skipped] == [
        ("gone", "file not found"), ("dev", "not a regular file (a device)")]
    assert rep.kept == 1


# ----------------------------------------------------------------------------- text
def test_text_duplicate_ids_never_swap_labels(tmp_path, vocab):
    """Stage 1 given two utterances with the same id but different audio and text (not via a manifest).
    -> the second is skipped and named as a duplicate; the first keeps its own label."""
    a, b = wav(tmp_path / "a.wav", 0.5), wav(tmp_path / "b.wav", 0.9, seed=1)
    ds = CTCDataset([utt(a, "x", "abc"), utt(b, "x", "xyz")], vocab, progress=False)
    assert len(ds) == 1 and ds.items[0].audio == a and ds.items[0].labels == vocab.encode("abc")
    assert ds.report.audio.skipped == [("x", f"{b}: duplicate id 'x' (ids must be unique)")]


def test_text_empty_and_unencodable_transcripts(tmp_path, vocab):
    """Stage 1 given an empty transcript, a blank one (spaces) and "日本" next to one good one.
    -> 1 item; the empty and blank ones skipped as empty transcripts, "日本" as outside the vocabulary."""
    paths = [wav(tmp_path / f"{i}.wav", seed=i) for i in range(4)]
    ds = CTCDataset([utt(paths[0], "e", ""), utt(paths[1], "s", "   "), utt(paths[2], "j", "日本"),
                     utt(paths[3], "g", "good")], vocab, progress=False)
    assert [it.id for it in ds.items] == ["g"]
    skipped = {i for i, _ in ds.report.audio.skipped + ds.report.vocab.skipped}
    assert skipped == {"e", "s", "j"}


# ----------------------------------------------------------------------------- caches
def _fill_one(tmp_path, encoder):
    cache = FeatureCache.for_encoder(encoder, root=tmp_path / "cache", dtype=torch.float32)
    u = utt(wav(tmp_path / "a.wav", 0.7), "a")
    cache.fill([u], encoder, progress=False)
    return cache, u, cache.path(cache.key(u.audio))


def test_cache_truncated_entry_is_recomputed(tmp_path, encoder):
    """A feature-cache file cut to half its size (disk full, killed copy).
    -> never used: deleted, counted in cache.bad, named (cache file + audio); fill recomputes the same states."""
    cache, u, entry = _fill_one(tmp_path, encoder)
    good = cache.get(u.audio)
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    assert cache.get(u.audio) is None and cache.bad == 1
    assert cache.report.skipped[0][0] == str(entry) and u.audio in cache.report.skipped[0][1]
    assert cache.fill([u], encoder, progress=False) == [u]
    assert torch.equal(cache.get(u.audio), good)


def test_cache_flipped_byte_is_recomputed(tmp_path, encoder):
    """A feature-cache file with one byte of its states changed (same size).
    -> "checksum mismatch": not used, counted, recomputed."""
    cache, u, entry = _fill_one(tmp_path, encoder)
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0x40
    entry.write_bytes(bytes(data))
    assert cache.get(u.audio) is None and cache.bad == 1
    assert "checksum mismatch" in cache.report.skipped[0][1]


def test_cache_entry_of_another_clip(tmp_path, encoder):
    """Clip B's cache file overwritten with clip A's (valid) entry.
    -> "holds the states of another audio": not used, counted; B's states are recomputed by fill."""
    cache, a, entry_a = _fill_one(tmp_path, encoder)
    b = utt(wav(tmp_path / "b.wav", 0.9, seed=5), "b")
    cache.fill([b], encoder, progress=False)
    entry_b = cache.path(cache.key(b.audio))
    shutil.copy(entry_a, entry_b)
    assert cache.get(b.audio) is None and "another audio" in cache.report.skipped[0][1]
    cache.fill([b], encoder, progress=False)
    assert cache.get(b.audio).shape != cache.get(a.audio).shape


def test_cache_key_includes_the_weights(tmp_path):
    """Two encoders with the same name and settings but different weights (hub vs converted copy).
    -> different cache folders; the same weights again -> the same folder."""
    e1 = ENCODERS.build("whisper", source="openai/whisper-tiny.en", model=tiny_whisper(seed=0))
    e2 = ENCODERS.build("whisper", source="openai/whisper-tiny.en", model=tiny_whisper(seed=1))
    e3 = ENCODERS.build("whisper", source="openai/whisper-tiny.en", model=tiny_whisper(seed=0))
    assert e1.settings() == e2.settings()
    dirs = [FeatureCache.for_encoder(e, root=tmp_path).dir for e in (e1, e2, e3)]
    assert dirs[0] != dirs[1] and dirs[0] == dirs[2]
    assert weights_fingerprint(e1) == weights_fingerprint(e3) != weights_fingerprint(e2)


def test_cache_nan_states_are_not_stored(tmp_path):
    """An encoder output with NaN handed to the cache.
    -> ValueError naming the audio; nothing written."""
    cache = FeatureCache({"encoder": "x"}, root=tmp_path)
    path = wav(tmp_path / "a.wav")
    with pytest.raises(ValueError, match=r"a\.wav: the encoder's states contain NaN"):
        cache.put(path, torch.full((3, 4), float("nan")))
    assert cache.size_bytes() == 0


def test_cache_fill_keeps_good_rows_sharing_an_id(tmp_path, encoder):
    """Stage-2 cache fill over 2 rows with the same id, one pointing at a missing file.
    -> the good row is kept (rows are tracked by position, not id); the bad one is named."""
    good = utt(wav(tmp_path / "a.wav"), "dup")
    bad = utt(tmp_path / "gone.wav", "dup")
    cache = FeatureCache.for_encoder(encoder, root=tmp_path / "c")
    rep = Report()
    assert cache.fill([good, bad], encoder, report=rep, progress=False) == [good]
    assert rep.kept == 1 and rep.skipped == [("dup", f"{bad.audio}: file not found")]


def test_cache_converted_model_truncated_is_rebuilt(tmp_path, monkeypatch):
    """A converted offline model folder whose weight file was truncated after the build.
    -> built_problem names the file; the next load rebuilds it (once), and says so."""
    monkeypatch.setattr(sources.config, "cache_dir", lambda: tmp_path)
    calls = []

    def fake_builder(out_dir):
        calls.append(1)
        (out_dir / "model.safetensors").write_bytes(b"w" * 3000)
        return {"from": "test"}

    monkeypatch.setitem(sources.OFFLINE["llm"]._builders, "test/fake-model", fake_builder)
    folder = sources.build_offline("test/fake-model", "llm")
    assert sources.build_offline("test/fake-model", "llm") == folder and len(calls) == 1
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    assert sources.built_problem(folder) == "model.safetensors differs from what was built (truncated or changed)"
    sources.build_offline("test/fake-model", "llm")
    assert len(calls) == 2 and (folder / "model.safetensors").stat().st_size == 3000


def test_cache_split_model_part_truncated(tmp_path, monkeypatch):
    """Whisper base's model.bin, split over two packages, with its second part cut short (a damaged install).
    -> CT2FormatError naming the joined file, its parts and "reinstall"; nothing is left in the cache."""
    import struct

    from speechlm_lib.models import ct2

    cache, blob = tmp_path / "cache", struct.pack("<I", ct2.CT2_VERSION) + b"x" * 5000
    dirs = [tmp_path / "p1", tmp_path / "p2"]
    for d, name, data in zip(dirs, ("model.bin.part1", "model.bin.part2"), (blob[:2000], blob[2000:-10])):
        (d / "data").mkdir(parents=True)
        (d / "data" / name).write_bytes(data)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (dirs[0] / "data" / f).write_text("{}")
    monkeypatch.setenv("SPEECHLM_CACHE", str(cache))
    monkeypatch.setattr(sources, "package_dirs", lambda packages: dirs)
    monkeypatch.setattr(sources, "WHISPER_BASE_BYTES", len(blob))
    with pytest.raises(ct2.CT2FormatError, match=r"model.bin joined from .*part1.*part2: 4994 bytes, "
                                                 r"expected 5004 .*reinstall"):
        sources.resolve("openai/whisper-base", "whisper", hub=False)
    assert [p.name for p in cache.iterdir()] == []


# ----------------------------------------------------------------------------- training: NaN / inf
def _conformer():
    torch.manual_seed(0)
    return ConformerCTC(ConformerConfig.preset("tiny", n_mels=16, d_model=32, ffn_dim=64, n_layers=1,
                                               subsample_channels=8, vocab_size=8, dropout=0.0,
                                               freq_masks=0, time_masks=0))  # no SpecAugment: a NaN stays a NaN


def _batches(n, nan_at=()):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        f = torch.randn(2, 16, 60, generator=g)
        if i in nan_at:
            f[0, 3, 5] = float("nan")
        out.append({"features": f, "feature_lengths": torch.tensor([60, 50]),
                    "labels": torch.randint(1, 8, (2, 4), generator=g), "label_lengths": torch.tensor([4, 3])})
    return out


def _cfg(tmp=None, **kw):
    base = dict(max_steps=4, lr=1e-2, warmup_steps=1, log_every=1, progress=False, log_with=None,
                output_dir=str(tmp) if tmp else None)
    return TrainConfig(**{**base, **kw})


def _loader(batches):
    return DataLoader(batches, batch_size=1, shuffle=False, collate_fn=lambda items: items[0])


def test_train_nan_batch_leaves_the_model_exactly_as_it_was():
    """A one-update run whose only batch has one NaN feature (Conformer with BatchNorm, AdamW).
    -> weights, BatchNorm running statistics and optimizer state all exactly as before; counted."""
    model = _conformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(_cfg(max_steps=1, max_skipped_share=1.0), model, _loader(_batches(1, nan_at={0})))
    out = trainer.run()
    assert out["skipped_nonfinite"] == 1 and out["skipped_updates"] == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert len(trainer.optimizer.state) == 0  # no step: no momentum, no weight decay


def test_train_one_nan_batch_model_stays_usable(tmp_path):
    """A 4-update Conformer run where batch 2 holds a NaN, then save and reload in eval mode.
    -> 1 skipped, 3 updates taken; the saved model's BatchNorm statistics and eval outputs are finite."""
    model = _conformer()
    out = Trainer(_cfg(), model, _loader(_batches(4, nan_at={1}))).run()
    assert (out["skipped_nonfinite"], out["skipped_updates"]) == (1, 1)
    model.save_pretrained(tmp_path / "enc")
    loaded = ConformerCTC.from_pretrained(tmp_path / "enc")
    logits = loaded(torch.randn(1, 16, 60), torch.tensor([60]))["logits"]
    assert torch.isfinite(logits).all()


def test_train_every_step_skipped_stops_with_an_error():
    """A run whose every batch holds a NaN (default max_skipped_share=0.25).
    -> NonFiniteTrainingError "training stopped ... more than max_skipped_share=0.25", never exit 0."""
    trainer = Trainer(_cfg(max_steps=8), _conformer(), _loader(_batches(8, nan_at=set(range(8)))))
    with pytest.raises(NonFiniteTrainingError, match=r"3 of the run's 8 micro-batches .* max_skipped_share=0\.25"):
        trainer.run()


def test_train_poisoned_model_is_not_saved(tmp_path):
    """ConformerCTC.save_pretrained on a model whose BatchNorm running mean holds NaN.
    -> ValueError names the folder and the tensor; no file written. Loading such a file is refused too."""
    model = _conformer()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    bn.running_mean[0] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to save: 1 tensor\(s\) hold NaN or inf, e\.g\. .*running_mean"):
        model.save_pretrained(tmp_path / "enc")
    assert not (tmp_path / "enc" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- checkpoints / interruptions
def _run(tmp, steps=6, resume=False, **kw):
    model = _conformer()
    trainer = Trainer(_cfg(tmp, max_steps=steps, save_every=2, keep_checkpoints=0, resume=resume, **kw),
                      model, _loader(_batches(6)))
    return trainer, trainer.run()


def _weights(trainer):
    return torch.cat([v.flatten().float() for v in trainer.model.state_dict().values()])


def test_ckpt_kill_during_save_resumes_from_the_last_complete(tmp_path, monkeypatch, capsys):
    """The process is killed while saving step 4 (after some files are written).
    -> no step_4 exists; resume removes .step_4.partial, takes step_2, says so, and ends on the same weights."""
    ref, _ = _run(tmp_path / "ref")
    real = Trainer.save_checkpoint

    def dying(self):
        if self.state.step == 4:
            self.accelerator.save_state(str(tmp_path / "run" / "checkpoints" / ".step_0000004.partial"))
            raise KeyboardInterrupt  # the kill
        return real(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    monkeypatch.setattr(Trainer, "save_checkpoint", real)
    names = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert names == {"step_0000002", ".step_0000004.partial"}  # never a half-written step_0000004
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    trainer, out = _run(tmp_path / "run", resume=True)
    text = capsys.readouterr().out
    assert "removed .step_0000004.partial" in text and "resumed from" in text and "step_0000002" in text
    assert torch.equal(_weights(trainer), _weights(ref))


def _break_newest(tmp_path, how):
    _run(tmp_path)
    newest = tmp_path / "checkpoints" / "step_0000006"
    how(newest)
    return newest


def test_ckpt_step_folder_without_manifest_is_passed_over(tmp_path, capsys):
    """A step_6 folder without MANIFEST.json (half-written in place by an older version).
    -> resume names it ("no MANIFEST.json") and resumes from step_4."""
    _break_newest(tmp_path, lambda p: (p / MANIFEST).unlink())
    trainer, out = _run(tmp_path, resume=True)
    text = capsys.readouterr().out
    assert "passing over" in text and "step_0000006: no MANIFEST.json" in text
    assert "resumed from" in text and "step_0000004" in text and out["final"]["step"] == 6


def test_ckpt_missing_rng_file_is_never_silent(tmp_path, capsys):
    """The RNG file random_states_0.pkl deleted from the newest checkpoint.
    -> that checkpoint is passed over, "random_states_0.pkl is missing"; resume takes step_4 and says so."""
    _break_newest(tmp_path, lambda p: (p / "random_states_0.pkl").unlink())
    _run(tmp_path, resume=True)
    text = capsys.readouterr().out
    assert "step_0000006: random_states_0.pkl is missing" in text and "step_0000004" in text


def test_ckpt_corrupted_optimizer_file(tmp_path, capsys):
    """One byte of optimizer.bin changed in the newest checkpoint (same size).
    -> "optimizer.bin does not match its SHA-256"; resume falls back to step_4."""
    def flip(p):
        data = bytearray((p / "optimizer.bin").read_bytes())
        data[len(data) // 2] ^= 1
        (p / "optimizer.bin").write_bytes(bytes(data))
    _break_newest(tmp_path, flip)
    _run(tmp_path, resume=True)
    assert "optimizer.bin does not match its SHA-256" in capsys.readouterr().out


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_ckpt_foreign_pickles_cannot_run_code(tmp_path, monkeypatch):
    """A checkpoint from someone else: an optimizer.bin that runs a command when unpickled, or planted
    custom_checkpoint_*.pkl files, each resealed with a matching manifest.
    -> the optimizer file is refused by weights-only loading; the planted pickles are refused unread."""
    monkeypatch.chdir(tmp_path)
    newest = tmp_path / "run" / "checkpoints" / "step_0000006"
    _break_newest(tmp_path / "run", lambda p: None)
    optimizer = (newest / "optimizer.bin").read_bytes()
    torch.save({"state": _Payload()}, newest / "optimizer.bin")
    write_checkpoint_manifest(newest)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _run(tmp_path / "run", steps=8, resume=True)
    (newest / "optimizer.bin").write_bytes(optimizer)
    (newest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload()))
    write_checkpoint_manifest(newest)
    with pytest.raises(RuntimeError, match=r"step_0000006 does not match the number of registered objects"):
        _run(tmp_path / "run", steps=8, resume=True)
    assert not (tmp_path / "PWNED").exists()


def test_ckpt_resumed_with_another_process_count(tmp_path):
    """A checkpoint written by 2 processes resumed by 1.
    -> ValueError names trainer_state.json: "written by a run of 2 processes, this one has 1"."""
    def two(p):
        doc = json.loads((p / "trainer_state.json").read_text())
        doc["num_processes"] = 2
        (p / "trainer_state.json").write_text(json.dumps(doc))
        write_checkpoint_manifest(p)
    _break_newest(tmp_path, two)
    with pytest.raises(ValueError, match=r"trainer_state\.json: written by a run of 2 processes, this one has 1"):
        _run(tmp_path, resume=True)
