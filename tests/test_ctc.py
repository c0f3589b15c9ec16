"""Stage 1 pieces: vocabulary, CTC decoding/feasibility, the Conformer, the dataset's bad-input handling."""
import pytest
import torch
from conftest import write_tone

from speechlm_lib.data.ctc_dataset import CTCDataset, collate, make_loader, one_thread
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.decoding import ctc
from speechlm_lib.models.conformer import ConformerConfig, ConformerCTC, stack_frames, subsampled_lengths
from speechlm_lib.models.vocab import VOCABS, CharVocab, OutOfVocabulary, encode_all, vocab_from_dict


# ----- vocabulary -------------------------------------------------------------------------------
def test_char_vocab_round_trip_and_blank():
    v = CharVocab()
    ids = v.encode("Don't stop, 42!")
    assert 0 not in ids and v.decode(ids) == "don't stop four two"
    assert v.tokens[0] == "<blank>" and len(v) == 29


def test_accents_are_stripped_not_rejected():
    assert CharVocab().decode(CharVocab().encode("Café Müller")) == "cafe muller"


def test_unknown_characters_are_named_and_counted():
    v = CharVocab()
    with pytest.raises(OutOfVocabulary, match="ß"):
        v.encode("Straße")
    report = Report()
    out = encode_all(v, ["hello", "Straße", "東京", "?!"], ["a", "b", "c", "d"], report)
    assert out[0] is not None and out[1:] == [None, None, None]
    assert [item for item, _ in report.skipped] == ["b", "c", "d"] and report.kept == 1


def test_sentencepiece_vocab_behind_the_same_interface():
    texts = ["the cat sat on the mat", "the dog ate the bone", "a cat and a dog"] * 20
    v = VOCABS.build("sentencepiece", texts=texts, vocab_size=30)
    ids = v.encode("The cat ate the mat.")
    assert 0 not in ids and v.decode(ids) == "the cat ate the mat"
    again = vocab_from_dict(v.to_dict())
    assert again.encode("a dog") == v.encode("a dog")
    assert set(VOCABS.names()) >= {"char", "sentencepiece"}


# ----- CTC ---------------------------------------------------------------------------------------
def test_collapse_and_greedy_decode():
    assert ctc.collapse([0, 3, 3, 0, 3, 5, 5, 0]) == [3, 3, 5]
    logits = torch.full((2, 6, 4), -5.0)
    for i, t in enumerate([1, 1, 0, 1, 2, 2]):
        logits[0, i, t] = 5.0
    logits[1, :, 3] = 5.0
    assert ctc.greedy_decode(logits, torch.tensor([6, 2])) == [[1, 1, 2], [3]]
    assert ctc.path_segments([0, 1, 1, 0, 2]) == [(1, 1, 2), (2, 4, 4)]


def test_feasibility_counts_repeats():
    assert ctc.min_frames([1, 2, 3]) == 3 and ctc.min_frames([1, 1, 1]) == 5
    assert ctc.is_feasible(5, [1, 1, 1]) and not ctc.is_feasible(4, [1, 1, 1])
    assert not ctc.is_feasible(10, [])
    report = Report()
    kept = ctc.filter_feasible([(3, [1, 2]), (2, [1, 1])], lambda x: x[0], lambda x: x[1], lambda x: "x", report)
    assert kept == [(3, [1, 2])] and len(report.skipped) == 1 and "infeasible" in report.skipped[0][1]


def test_loss_is_finite_even_for_an_infeasible_batch():
    model = ConformerCTC(ConformerConfig.preset("tiny"))
    out = model(torch.randn(1, 80, 16), torch.tensor([16]), torch.ones(1, 20, dtype=torch.long), torch.tensor([20]))
    assert torch.isfinite(out["loss"])  # zero_infinity: the second guard behind filter_feasible


# ----- Conformer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ConformerCTC(ConformerConfig.preset("tiny"), vocab=CharVocab()).eval()


def test_shapes_lengths_and_padding_invariance(tiny):
    feats, lengths = torch.randn(3, 80, 203), torch.tensor([203, 150, 9])
    out = tiny(feats, lengths)
    assert out["logits"].shape == (3, 51, 29) and out["lengths"].tolist() == [51, 38, 3]
    assert subsampled_lengths(203) == 51
    x, n = tiny.encode(feats, lengths)
    alone, _ = tiny.encode(feats[1:2, :, :150], lengths[1:2])
    assert torch.allclose(x[1, :38], alone[0], atol=1e-5)  # padding never leaks into valid frames
    assert x[1, 38:].abs().max() == 0


def test_presets_and_sizes():
    n = {p: ConformerCTC(ConformerConfig.preset(p)).num_parameters() for p in ("tiny", "small", "base")}
    assert n["tiny"] < 500_000 < n["small"] < 2_000_000 < n["base"] < 6_000_000
    assert ConformerConfig.preset("smoke") == ConformerConfig.preset("tiny")
    assert ConformerConfig.preset("cpu") == ConformerConfig.preset("small")
    assert ConformerConfig.preset("base", n_layers=2).n_layers == 2
    with pytest.raises(KeyError):
        ConformerConfig.preset("huge")


def test_stack_frames():
    x = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    y, n = stack_frames(x, torch.tensor([5, 3]), 2)
    assert y.shape == (2, 3, 6) and n.tolist() == [3, 2]
    assert torch.equal(y[0, 0], torch.cat([x[0, 0], x[0, 1]]))
    assert y[0, 2, 3:].abs().sum() == 0 and y[1, 1, 3:].abs().sum() == 0  # tail / padding zeroed
    y1, n1 = stack_frames(x, torch.tensor([5, 3]), 1)
    assert n1.tolist() == [5, 3] and y1[1, 3:].abs().sum() == 0


def test_save_and_load_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "enc")
    again = ConformerCTC.from_pretrained(tmp_path / "enc")
    feats, lengths = torch.randn(2, 80, 100), torch.tensor([100, 60])
    assert torch.equal(tiny(feats, lengths)["logits"], again(feats, lengths)["logits"])
    assert again.vocab.encode("abc") == [1, 2, 3] and again.config == tiny.config
    with pytest.raises(FileNotFoundError, match="config.json"):
        ConformerCTC.from_pretrained(tmp_path)


def test_spec_augment_only_in_training(tiny):
    feats, lengths = torch.randn(2, 80, 200), torch.tensor([200, 200])
    torch.manual_seed(1)
    tiny.train()
    masked = tiny.spec_augment(feats)
    tiny.eval()
    assert (masked == 0).any() and not torch.equal(masked, feats)
    assert torch.equal(tiny(feats, lengths)["logits"], tiny(feats, lengths)["logits"])


# ----- dataset: bad input is skipped and counted -------------------------------------------------
def test_dataset_skips_and_counts_bad_items(tmp_path):
    ok = write_tone(tmp_path / "ok.wav", seconds=1.0)
    short = write_tone(tmp_path / "short.wav", seconds=0.3)  # 30 frames -> 8 encoder frames
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    utts = [Utterance("good", str(ok), "hello"),
            Utterance("oov", str(ok), "Straße"),
            Utterance("too-short", str(short), "a sentence far too long for eight frames"),
            Utterance("broken", str(tmp_path / "broken.wav"), "hello"),
            Utterance("accent", str(ok), "café")]
    ds = CTCDataset(utts, CharVocab(), progress=False)
    assert [it.id for it in ds.items] == ["good", "accent"]
    assert ds.report.counts() == {"skipped_audio": 1, "skipped_vocab": 1, "skipped_infeasible": 1}
    assert ds.report.infeasible.skipped[0][0] == "too-short"
    batch = collate(ds.items)
    assert batch["features"].shape == (2, 80, 100) and batch["labels"].tolist()[1] == [3, 1, 6, 5, 0]
    assert batch["ids"] == ["good", "accent"] and batch["label_lengths"].tolist() == [5, 4]
    assert sum(len(b["ids"]) for b in make_loader(ds, batch_size=1)) == 2


def test_tiny_model_learns_a_fixed_mapping():
    torch.manual_seed(0)
    model = ConformerCTC(ConformerConfig.preset("tiny", n_mels=16, n_layers=1, dropout=0.0, freq_masks=0,
                                                time_masks=0))
    feats, lengths = torch.randn(4, 16, 120), torch.tensor([120, 120, 100, 80])
    labels, llen = torch.randint(1, 29, (4, 6)), torch.tensor([6, 6, 5, 4])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    with one_thread():  # tiny ops: one thread is faster, and immune to a busy machine
        for _ in range(50):
            loss = model(feats, lengths, labels, llen)["loss"]
            opt.zero_grad(), loss.backward(), opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
