"""Snapping decoded near-misses to the biasing list (decoding.list_snap): what is swapped, what never is."""
from __future__ import annotations

from speechlm_lib.decoding.list_snap import ListSnapConfig, snap_all, snap_to_list, training_vocabulary, tune_min_score
from speechlm_lib.metrics_bias import biasing_scores

ON = ListSnapConfig(min_score=0.7)


def test_a_near_miss_becomes_the_list_entry_and_keeps_its_possessive():
    assert snap_to_list("We need the Krolovre manual.", ["Crolovre", "Zadoki"], ON) == \
        ("We need the Crolovre manual.", [("Krolovre", "Crolovre")])
    assert snap_to_list("Russana's new phone", ["Rossana"], ON) == ("Rossana's new phone", [("Russana's", "Rossana")])
    # a name the projector split into pieces is compared as one run of words
    low = ListSnapConfig(min_score=0.5)
    assert snap_to_list("ask whether the Zv Morrusou Plus works", ["Zvokrosloum"], low)[0] == \
        "ask whether the Zvokrosloum Plus works"


def test_nothing_changes_when_off_unlisted_or_far_from_every_entry():
    hyp = "Tell Krolovre about it."
    assert snap_to_list(hyp, ["Crolovre"], ListSnapConfig(min_score=0.0)) == (hyp, [])  # off
    assert snap_to_list(hyp, None, ON) == (hyp, []) and snap_to_list(hyp, [], ON) == (hyp, [])
    assert snap_to_list(hyp, ["Zadoki"], ON) == (hyp, [])  # nothing close enough
    assert snap_to_list("", ["Zadoki"], ON) == ("", [])


def test_an_entry_already_written_is_kept_and_not_written_twice():
    hyp = "Tell Uberto that the Uber to Meen Pro is ready."
    text, swaps = snap_to_list(hyp, ["Uberto", "Metan"], ListSnapConfig(min_score=0.5))
    assert text == "Tell Uberto that the Uber to Metan Pro is ready." and swaps == [("Meen", "Metan")]


def test_names_only_leaves_lower_case_words_alone():
    hyp = "we flew to borwa last week"
    assert snap_to_list(hyp, ["Borowa"], ON) == (hyp, [])
    assert snap_to_list(hyp, ["Borowa"], ListSnapConfig(min_score=0.7, names_only=False))[0] == \
        "we flew to Borowa last week"


def test_each_words_are_swapped_once_by_the_best_entry():
    text, swaps = snap_to_list("Meet Barilaro today.", ["Barillara", "Barillaro"], ListSnapConfig(min_score=0.6))
    assert text == "Meet Barillaro today." and len(swaps) == 1


def test_the_threshold_chosen_fixes_near_misses_without_writing_distractors():
    refs = ["meet Barillaro today", "call Kowalczyk now", "the Capital office", "ask Ijzerman"]
    hyps = ["Meet Barilaro today", "Call Kowalchik now", "The Capital office", "Ask Eisermann"]
    lists = [["Barillaro", "Tinte"], ["Kowalczyk"], ["Capelli"], ["Ijzerman", "Sadri"]]
    best, rows = tune_min_score(refs, hyps, lists, grid=(0.0, 0.5, 0.7, 0.95))
    by = {r["min_score"]: r for r in rows}
    assert by[0.0]["swaps"] == 0 and by[0.0]["wer"] == biasing_scores(refs, hyps, lists)["wer"]
    assert by[0.5]["false_alarms"] > by[0.7]["false_alarms"] == 0  # a low threshold writes "Capelli" for "Capital"
    assert by[0.95]["swaps"] == 0  # a high one changes nothing
    assert best == 0.7 and by[0.7]["wer"] == 0.0 < by[0.0]["wer"]
    texts, count = snap_all(hyps, lists, ListSnapConfig(min_score=best))
    assert count == 3 and texts == ["Meet Barillaro today", "Call Kowalczyk now", "The Capital office", "Ask Ijzerman"]
    # when every swap hurts, the choice is off
    assert tune_min_score(["the Capital office"], ["The Capital office"], [["Capitol"]], grid=(0.0, 0.5))[0] == 0.0


def test_words_heard_in_training_are_never_snapped():
    known = training_vocabulary(["The capital office opens at nine.", "Meet Peter's team"])
    assert {"capital", "peter's", "the"} <= known
    hyps = ["The Capital office", "Meet Barilaro today"]
    lists = [["Capelli"], ["Barillaro"]]
    low = ListSnapConfig(min_score=0.5)
    assert snap_all(hyps, lists, low)[0][0] == "The Capelli office"  # without a vocabulary: a false alarm
    assert snap_all(hyps, lists, low, known) == (["The Capital office", "Meet Barillaro today"], 1)
    from dataclasses import replace
    assert snap_all(hyps, lists, replace(low, unseen_only=False), known)[1] == 2  # the rule switched off
    # a known word that ends like a possessive is still known ("let's" is in training, "let" is not)
    talk = training_vocabulary(["let's go"])
    assert snap_to_list("Let's ask Valois", ["Lemaitre", "Loiseau"], low, talk) == ("Let's ask Loiseau",
                                                                                    [("Valois", "Loiseau")])


def test_training_words_are_saved_beside_a_model_and_read_back(tmp_path):
    from speechlm_lib.decoding.list_snap import WORDS_FILE, load_training_words, save_training_words

    assert load_training_words(tmp_path) is None and load_training_words(tmp_path / "none.txt") is None
    path = save_training_words(tmp_path, ["Let's meet Peter.", "the Capital city"])
    assert path == tmp_path / WORDS_FILE
    words = load_training_words(tmp_path)
    assert words == training_vocabulary(["Let's meet Peter.", "the Capital city"]) and "capital" in words
    assert load_training_words(path) == words  # the folder or the file
    own = tmp_path / "texts.txt"
    own.write_text("Any transcripts, one a line.\nMore of them\n")
    assert load_training_words(own) == {"any", "transcripts", "one", "a", "line", "more", "of", "them"}
    # the words read back protect what the model heard: "Capital" stays, the near-miss of an unheard name snaps
    assert snap_to_list("The Capital of Krolovre", ["Capelli", "Crolovre"], ON, words)[0] == "The Capital of Crolovre"
