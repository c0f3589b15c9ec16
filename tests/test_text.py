"""The shared normalizer and WER/CER."""
from speechlm_lib.text import cer, normalize, wer


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
