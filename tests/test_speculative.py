"""Speculative greedy decoding gives exactly the greedy tokens, whatever the draft; a good draft
needs fewer LLM passes. Checked against Hugging Face `generate` on a tiny random Llama."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import DynamicCache

from speechlm_lib.data.records import Utterance
from speechlm_lib.decoding import generation
from speechlm_lib.decoding.generation import DecodeConfig, transcribe
from speechlm_lib.decoding.repetition import cut_repetitions
from speechlm_lib.decoding.speculative import Prompts, speculative_greedy, speculative_stream
from speechlm_lib.models.build import ModelConfig, build_speechlm
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.kv import cache_of, make_cache, pack
from speechlm_lib.models.tiny_models import tiny_llm, tiny_whisper

PAD = 0


@pytest.fixture(scope="module")
def llm():
    return tiny_llm(hidden_size=64, layers=2, seed=3)[0]


def _prompts(llm, lengths, seed=0):
    """Left-padded random prompt embeddings ``(batch, seq, dim)`` and their mask."""
    g = torch.Generator().manual_seed(seed)
    n, dim = max(lengths), llm.config.hidden_size
    embeds = torch.randn(len(lengths), n, dim, generator=g) * 0.5
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, n - length:] = 1
    return embeds, mask


def _greedy(llm, embeds, mask, budgets, stops):
    """What `generation.generate` does without a draft: HF greedy, each row held to its budget."""
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max(budgets), do_sample=False,
                       eos_token_id=stops, pad_token_id=PAD)
    rows, truncated = [], 0
    for row, budget in zip(out.tolist(), budgets):
        row = row[:budget]
        end = next((i for i, t in enumerate(row) if t in stops), None)
        truncated += end is None
        rows.append(row[:end] if end is not None else row)
    return rows, truncated


def _case(llm, seed=0):
    """Prompts, budgets and stop ids chosen so that some rows stop and some hit their budget."""
    embeds, mask = _prompts(llm, [7, 4, 9, 5], seed)
    free = llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=12, do_sample=False,
                        pad_token_id=PAD).tolist()
    stops = [free[0][4], free[2][7]]  # rows end where these first appear
    return embeds, mask, [12, 3, 12, 10], stops


def _drafts(reference, stops, kind, vocab, seed=0):
    rng = np.random.RandomState(seed)
    out = []
    for row in reference:
        good = row + [stops[0]]
        if kind == "perfect":
            out.append(good)
        elif kind == "empty":
            out.append([])
        elif kind == "random":
            out.append(rng.randint(0, vocab, size=len(good)).tolist())
        else:  # "edited": a substitution, a deletion and an insertion
            d = list(good)
            if len(d) > 3:
                d[1] = (d[1] + 1) % vocab
                del d[2]
                d.insert(3, int(rng.randint(vocab)))
            out.append(d)
    return out


@pytest.mark.parametrize("kind", ["perfect", "empty", "random", "edited"])
def test_any_draft_gives_exactly_the_greedy_tokens(llm, kind):
    embeds, mask, budgets, stops = _case(llm)
    want, want_truncated = _greedy(llm, embeds, mask, budgets, stops)
    assert 0 < want_truncated < len(want)  # the case has both endings
    drafts = _drafts(want, stops, kind, llm.config.vocab_size)
    got, truncated, _ = speculative_greedy(llm, embeds, mask, None, drafts, budgets, stops, PAD)
    assert got == want
    assert truncated == want_truncated


def test_a_good_draft_needs_fewer_passes(llm):
    embeds, mask, budgets, stops = _case(llm)
    want, _ = _greedy(llm, embeds, mask, budgets, stops)
    passes = {}
    for kind in ("perfect", "edited", "empty"):
        drafts = _drafts(want, stops, kind, llm.config.vocab_size)
        passes[kind] = speculative_greedy(llm, embeds, mask, None, drafts, budgets, stops, PAD)[2]
    assert passes["perfect"] == 1  # every row settled with the prompt
    assert passes["perfect"] < passes["edited"] < passes["empty"]
    # no draft: one token a pass, as plain greedy (a row that stops also runs the pass that picks the stop)
    assert passes["empty"] == max(len(r) + (len(r) < b) for r, b in zip(want, budgets))
    small = speculative_greedy(llm, embeds, mask, None, _drafts(want, stops, "perfect", 1), budgets, stops, PAD,
                               block=2)
    assert small[0] == want and small[2] > 1  # a block of 2 checks at most 2 drafted tokens a pass


def test_a_cached_prompt_prefix_gives_the_same_tokens(llm):
    embeds, mask, budgets, stops = _case(llm, seed=1)
    prefix = torch.randn(1, 6, llm.config.hidden_size) * 0.5
    b = embeds.shape[0]
    full = torch.cat([prefix.expand(b, -1, -1), embeds], dim=1)
    full_mask = torch.cat([torch.ones(b, 6, dtype=torch.long), mask], dim=1)
    want, want_truncated = _greedy(llm, full, full_mask, budgets, stops)
    with torch.no_grad():
        kv = cache_of(llm.get_decoder()(inputs_embeds=prefix, use_cache=True))
    cache = DynamicCache(ddp_cache_data=[(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1))
                                         for layer in kv.layers], config=llm.config)
    drafts = _drafts(want, stops, "edited", llm.config.vocab_size)
    got, truncated, _ = speculative_greedy(llm, full, full_mask, cache, drafts, budgets, stops, PAD)
    assert (got, truncated) == (want, want_truncated)


def _tiny_ctc_model(tmp_path):
    """A tiny random ``ctc`` SpeechLM and five noise clips to transcribe."""
    llm, tok = tiny_llm(seed=1)
    enc = ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper())
    texts = ["hello world", "the quick brown fox", "you are tiny"]
    cfg = ModelConfig(projector="ctc", stride=2, projector_kwargs={"hidden": 32, "dropout": 0.0, "hard": True})
    model = build_speechlm(cfg, encoder=enc, llm=llm, tokenizer=tok, texts=texts)
    utts = []
    for i in range(5):
        wave = np.random.RandomState(i).randn(int(16000 * (0.8 + 0.3 * i))).astype("float32") * 0.1
        sf.write(str(tmp_path / f"u{i}.wav"), wave, 16000)
        utts.append(Utterance(id=f"u{i}", audio=str(tmp_path / f"u{i}.wav"), text=texts[i % 3], duration=1.0))
    return model, utts


def test_transcripts_with_and_without_the_ctc_draft_are_the_same(tmp_path, monkeypatch):
    model, utts = _tiny_ctc_model(tmp_path)
    calls = []
    monkeypatch.setattr(generation, "speculative_greedy",
                        lambda *a, **k: calls.append(1) or speculative_greedy(*a, **k))
    plain = transcribe(model, utts, DecodeConfig(batch_size=3, draft=False), progress=False)
    assert not calls
    drafted = transcribe(model, utts, DecodeConfig(batch_size=3, draft=True, draft_slack=None), progress=False)
    assert len(calls) == 2  # both batches went through the draft path
    assert drafted.token_ids == plain.token_ids
    assert drafted.texts == plain.texts and drafted.truncated == plain.truncated


def test_draft_slack_cuts_only_what_runs_past_the_draft(tmp_path, monkeypatch):
    model, utts = _tiny_ctc_model(tmp_path)
    plain = transcribe(model, utts, DecodeConfig(batch_size=8, draft=False), progress=False)
    drafts = []
    monkeypatch.setattr(generation, "speculative_greedy",
                        lambda llm, e, m, c, d, *a, **k: drafts.extend(d) or speculative_greedy(llm, e, m, c, d, *a, **k))
    slack, cfg = 2, DecodeConfig(batch_size=8, draft_slack=2)
    capped = transcribe(model, utts, cfg, progress=False)
    frames = [sf.info(u.audio).frames for u in utts]
    order = sorted(range(len(utts)), key=lambda i: -frames[i])  # transcribe's batch order
    # a draft is the projector's guesses + the end id; the audio budget still applies too
    limits = {i: min(len(d) - 1 + slack, generation.token_budget(frames[i] / 16000, cfg)) for i, d in zip(order, drafts)}
    assert any(len(plain.token_ids[i]) > limits[i] for i in limits)  # the random LLM runs on past some drafts
    for i, limit in limits.items():
        assert capped.token_ids[i] == plain.token_ids[i][:limit]  # greedy's own tokens, cut at the limit
    assert capped.truncated == sum(len(plain.token_ids[i]) >= limit for i, limit in limits.items())


def _groups(llm, sizes, seed=0):
    """Prompt batches of `sizes` rows with their greedy answers and drafts ("edited", so rows need
    different numbers of passes); one budget and stop set for all."""
    out, stops = [], None
    for n, size in enumerate(sizes):
        lengths = [3 + (seed + n + 2 * i) % 6 for i in range(size)]
        embeds, mask = _prompts(llm, lengths, seed=seed + n)
        if stops is None:
            free = llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                pad_token_id=PAD).tolist()
            stops = [free[0][4]]
        budgets = [12 - (i % 3) * 3 for i in range(size)]
        want, _ = _greedy(llm, embeds, mask, budgets, stops)
        drafts = _drafts(want, stops, "edited" if n % 2 else "empty", llm.config.vocab_size, seed=n)
        out.append((embeds, mask, budgets, drafts, want))
    return out, stops


@pytest.mark.parametrize("slots,refill_at", [(3, 1), (3, 2), (4, 1)])
def test_refilled_decoding_gives_exactly_the_greedy_tokens(llm, slots, refill_at):
    groups, stops = _groups(llm, [3, 2, 4, 1])
    batches = [Prompts(e, m, None, d, b, keys=[(g, i) for i in range(len(d))])
               for g, (e, m, b, d, _) in enumerate(groups)]
    got = {k: ids for k, ids, _ in speculative_stream(llm, batches, stops, PAD, slots=slots, refill_at=refill_at)}
    want = {(g, i): row for g, (*_, rows) in enumerate(groups) for i, row in enumerate(rows)}
    assert got == want


def test_a_refill_saves_the_passes_stragglers_run_alone(llm):
    groups, stops = _groups(llm, [2, 2, 2, 2], seed=4)
    passes = {}
    for refill_at in (0, 1):
        batches = [Prompts(e, m, None, [w[0] + [stops[0]], []], b)  # one row is done at once, one straggles
                   for e, m, b, _, w in groups]
        stats = {}
        list(speculative_stream(llm, batches, stops, PAD, slots=2, refill_at=refill_at, stats=stats))
        passes[refill_at] = stats["passes"]
    assert passes[1] < passes[0]


def test_refilled_rows_keep_a_shared_cached_prefix(llm):
    prefix = torch.randn(1, 5, llm.config.hidden_size, generator=torch.Generator().manual_seed(9)) * 0.5
    with torch.no_grad():
        kv = cache_of(llm.get_decoder()(inputs_embeds=prefix, use_cache=True))
    groups, stops = _groups(llm, [3, 3], seed=2)
    batches, want = [], {}
    for g, (embeds, mask, budgets, _, _) in enumerate(groups):
        b = embeds.shape[0]
        full = torch.cat([prefix.expand(b, -1, -1), embeds], dim=1)
        full_mask = torch.cat([torch.ones(b, 5, dtype=torch.long), mask], dim=1)
        rows, _ = _greedy(llm, full, full_mask, budgets, stops)
        want.update({(g, i): row for i, row in enumerate(rows)})
        cache = DynamicCache(ddp_cache_data=[(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1))
                                             for layer in kv.layers], config=llm.config)
        drafts = _drafts(rows, stops, "edited", llm.config.vocab_size, seed=g)
        batches.append(Prompts(full, full_mask, cache, drafts, budgets, keys=[(g, i) for i in range(b)]))
    got = {k: ids for k, ids, _ in speculative_stream(llm, batches, stops, PAD, slots=3, refill_at=1)}
    assert got == want


def test_pack_right_aligns_each_rows_attended_positions(llm):
    def cache(batch, seq, fill):
        t = torch.arange(batch * seq, dtype=torch.float).reshape(batch, 1, seq, 1) + fill
        return make_cache([(t, -t)] * llm.config.num_hidden_layers, llm.config)

    a_mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 0]])
    b_mask = torch.tensor([[0, 0, 1]])
    packed, mask = pack([(cache(2, 5, 0), a_mask), (cache(1, 3, 100), b_mask)], llm.config)
    keys = packed.layers[0].keys[:, 0, :, 0]
    assert mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    assert keys[0, 1:].tolist() == [1, 2, 4] and keys[1].tolist() == [5, 6, 7, 8] and keys[2, -1].item() == 102
    assert torch.equal(packed.layers[0].values, -keys[:, None, :, None])


def test_transcripts_with_and_without_a_refill_are_the_same(tmp_path):
    model, utts = _tiny_ctc_model(tmp_path)
    utts = utts + [Utterance(id=f"again{u.id}", audio=u.audio, text=u.text, duration=1.0) for u in utts[:3]]
    base = transcribe(model, utts, DecodeConfig(batch_size=3), progress=False)
    for refill_at in (1, 2):
        again = transcribe(model, utts, DecodeConfig(batch_size=3, refill_at=refill_at), progress=False)
        assert again.token_ids == base.token_ids
        assert again.texts == base.texts and again.truncated == base.truncated


@pytest.mark.parametrize("draft,refill_at", [(True, 0), (True, 1), (False, 0)])
def test_the_repetition_guard_stops_a_looping_row_with_the_cut_of_its_whole_answer(tmp_path, monkeypatch, draft,
                                                                                    refill_at):
    """Rows stop as soon as their loop's cut is fixed (`repetition.loop_closed`), with the draft or through
    `generate`'s own loop, and the texts are exactly the whole answers cut (`cut_repetitions`). Each id reads as
    "no" or "yes" here, so the random LLM's answers loop."""
    model, utts = _tiny_ctc_model(tmp_path)
    monkeypatch.setattr(model.prompts, "decode", lambda ids: " ".join(("no", "yes")[i % 2] for i in ids))
    cfg = DecodeConfig(batch_size=3, draft=draft, draft_slack=None, refill_at=refill_at)
    off = transcribe(model, utts, replace(cfg, max_repeats=0), progress=False)
    on = transcribe(model, utts, cfg, progress=False)
    assert on.texts == [cut_repetitions(t) for t in off.texts]
    assert on.looped == sum(t != cut_repetitions(t) for t in off.texts) > 0
    assert all(whole[:len(ids)] == ids for ids, whole in zip(on.token_ids, off.token_ids))  # greedy's, cut short
    assert sum(map(len, on.token_ids)) < sum(map(len, off.token_ids)) and on.passes <= off.passes


@pytest.mark.parametrize("draft", [True, False])
def test_rows_with_their_own_lists_share_the_prompt_before_them(tmp_path, monkeypatch, draft):
    """Per-row instructions (keyword lists) differ after a common start: that start runs once as a cached prefix
    (`SpeechLM.shared_prefix`), each row runs its own rest, and the tokens are those of running every row whole."""
    model, utts = _tiny_ctc_model(tmp_path)
    lists = [f"Names that may occur: {w}. Transcribe the audio." for w in ("Zadoki", "Crolovre, Bo", "Ann", "Zed", "Q")]
    cfg = DecodeConfig(batch_size=3, draft=draft, draft_slack=None)
    model.use_prefix_cache = False
    whole = transcribe(model, utts, cfg, instruction=lists, progress=False)
    model.use_prefix_cache, shared = True, []
    real = model.prefix_kv
    monkeypatch.setattr(model, "prefix_kv", lambda ids, rows, **k: shared.append(ids) or real(ids, rows, **k))
    cached = transcribe(model, utts, cfg, instruction=lists, progress=False)
    assert cached.token_ids == whole.token_ids and cached.texts == whole.texts
    full = [model.prompts.prompt(x).prefix for x in lists]
    assert shared and all(0 < len(ids) < min(map(len, full)) for ids in shared)  # the common start only
    assert all(tuple(f[:len(ids)]) == ids for ids in shared for f in full)
