"""The shared normalizer and WER/CER."""
from speechlm_lib.data.text import normalize
from speechlm_lib.metrics import cer, wer


def test_normalize_case_punct_digits():
    assert normalize("Hello, World!") == "hello world"
    assert normalize("Room 42.") == "room four two"
    assert normalize("Don't   stop -- 'quoted'") == "don't stop quoted"
    assert normalize("Grüße aus Köln") == "grüße aus köln"


def test_wer_cer_values():
    refs = ["the cat sat", "a dog"]
    assert wer(refs, ["The cat sat.", "a dog"]) == 0.0
    assert abs(wer(refs, ["the cat", "a dog"]) - 1 / 5) < 1e-9
    assert cer(["abc"], ["abd"]) > 0


def test_empty_references_are_ignored_and_lengths_checked():
    assert wer(["", "hi"], ["x", "hi"]) == 0.0
    import pytest

    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


def test_errors_by_frequency_splits_wer_by_training_count():
    from speechlm_lib.metrics import errors_by_frequency, word_counts

    counts = word_counts(["the cat sat", "the cat ran", "the dog"] * 4 + ["a bird"])
    refs = ["The cat sat on Zork.", "A bird ran"]
    hyps = ["the cat sat on zoik extra", "bird ran"]
    out = errors_by_frequency(refs, hyps, counts, rare_below=3)
    # reference words: the cat sat (common) on zork (unseen) / a bird (rare) ran (common)
    assert {g: out[g]["words"] for g in ("unseen", "rare", "common")} == {"unseen": 2, "rare": 2, "common": 4}
    # zork -> zoik, "a" deleted, every common word matched
    assert out["unseen"]["error"] == 0.5 and out["rare"]["error"] == 0.5 and out["common"]["error"] == 0.0
    assert out["insertions"] == 1 / 8
    total = sum(out[g]["points"] for g in ("unseen", "rare", "common")) + out["insertions"]
    assert abs(total - wer(refs, hyps)) < 1e-9


def test_errors_by_frequency_of_perfect_hypotheses_is_zero():
    from speechlm_lib.metrics import errors_by_frequency, word_counts

    refs = ["hello world", "good morning"]
    out = errors_by_frequency(refs, refs, word_counts(["hello"]))
    assert out["unseen"]["words"] == 3 and out["rare"]["words"] == 1
    assert all(out[g]["points"] == 0 for g in ("unseen", "rare", "common")) and out["insertions"] == 0
