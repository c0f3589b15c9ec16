"""Placing spotted list entries where the projector heard them (decoding/list_place.py, keyword_spot.spot)."""
import pytest
import torch

from speechlm_lib.decoding.keyword_spot import KeywordSpotter, spot
from speechlm_lib.decoding.list_filter import Spotted
from speechlm_lib.decoding.list_place import ListPlaceConfig, place_all, place_spotted, tune_min_similarity, word_map

PIECES = {11: " I", 12: " met", 13: " Ro", 14: "tra", 15: "ut", 16: " today", 17: " Zad", 18: "oki"}


def _heard(path: list[int], classes: int = 9) -> Spotted:
    """An utterance whose projector best path is `path` (classes 1..8 = PIECES in order, 0 = blank)."""
    logits = torch.full((len(path), classes), -5.0)
    for t, c in enumerate(path):
        logits[t, c] = 0.0
    spotter = KeywordSpotter(lambda text: [], list(PIECES), PIECES.get)
    return Spotted(logits.log_softmax(-1), spotter)


# " I" " met" " Ro" "tra" "ut" " today": frames 1, 3, 5-6, 7, 9, 11
HEARD = [0, 1, 0, 2, 0, 3, 3, 4, 0, 5, 0, 6, 0]
ON = ListPlaceConfig(min_similarity=0.5)


def test_spot_gives_the_frames_of_the_best_alignment():
    logp = _heard(HEARD).logp
    scores, first, last = spot(logp, [[3, 4, 5], [6]])
    assert scores.tolist() == [0.0, 0.0]
    assert (first[0], last[0]) == (5, 9)  # " Ro" at 5-6 .. "ut" at 9
    assert (first[1], last[1]) == (11, 11)
    assert _heard(HEARD).spotter.words(logp) == [("I", 1, 1), ("met", 3, 3), ("Rotraut", 5, 9), ("today", 11, 11)]


def test_a_spotted_name_replaces_the_words_heard_at_its_frames_or_fills_the_gap_the_llm_left():
    heard = _heard(HEARD)
    assert place_spotted("I met brought out today.", ["Zadoki", "Rotraut"], heard, ON) == \
        ("I met Rotraut today.", [("brought out", "Rotraut")])  # Zadoki was not heard
    assert place_spotted("I met today.", ["Rotraut"], heard, ON) == ("I met Rotraut today.", [("", "Rotraut")])
    assert place_spotted("I met Rotraut", ["today"], heard, ON)[0] == "I met Rotraut today"  # at the end
    assert place_spotted("I met", ["Rotraut", "today"], heard, ON)[0] == "I met Rotraut"  # one entry a gap
    assert place_spotted("I met Rotraut's today.", ["Rotraut"], heard, ON) == ("I met Rotraut's today.", [])
    assert place_spotted("I met brought out today.", ["Rotraut"], heard, ListPlaceConfig()) == \
        ("I met brought out today.", [])  # off
    assert place_spotted("I met brought out today.", [], heard, ON) == ("I met brought out today.", [])


def test_a_name_that_would_replace_too_many_words_is_left_out():
    heard = _heard(HEARD)
    tight = ListPlaceConfig(min_similarity=0.5, max_extra_words=0)
    assert place_spotted("I met bro ught out today.", ["Rotraut"], heard, tight)[1] == []
    assert place_spotted("I met brought today.", ["Rotraut"], heard, tight)[0] == "I met Rotraut today."


def test_heard_lower_case_words_at_the_edges_stay_and_the_name_goes_beside_them():
    merged = _heard([0, 1, 0, 2, 0, 4, 5, 0, 6])  # " I" " met" "tra" "ut" " today": one projector word "mettraut"
    anywhere, known = ListPlaceConfig(min_similarity=1e-6), {"i", "met", "today", "mary"}
    assert place_spotted("I met today.", ["Rotraut"], merged, anywhere) == ("I Rotraut today.", [("met", "Rotraut")])
    assert place_spotted("I met today.", ["Rotraut"], merged, anywhere, known) == \
        ("I met Rotraut today.", [("", "Rotraut")])  # "met" was heard in training: it stays
    heard = _heard(HEARD)
    assert place_spotted("I met Mary today.", ["Rotraut"], heard, ON, known)[0] == "I met Rotraut today."  # a name
    assert place_spotted("I met brought out today.", ["Rotraut"], heard, ON, known)[0] == "I met Rotraut today."


def test_word_map_shares_replaced_blocks_and_marks_deletions():
    assert word_map(["a", "b", "c"], ["a", "x", "y", "c"]) == [(0, 1), (1, 3), (3, 4)]
    assert word_map(["a", "b", "c"], ["a", "c"]) == [(0, 1), (1, 1), (1, 2)]


def test_the_threshold_is_chosen_by_wer_on_dev():
    heard = _heard(HEARD)
    refs, hyps = ["I met Rotraut today"] * 2, ["I met brought out today", "I met today"]
    texts, n = place_all(hyps, [["Rotraut"], ["Rotraut"]], [heard, heard], ON)
    assert texts == ["I met Rotraut today"] * 2 and n == 2
    best, rows = tune_min_similarity(refs, hyps, [["Rotraut"]] * 2, [heard, heard], grid=(0.0, 0.5, 1.1))
    assert best == 0.5 and [r["wer"] for r in rows] == pytest.approx([3 / 8, 0.0, 3 / 8])


def test_the_threshold_grows_with_the_list_length_unless_fixed():
    heard = _heard(HEARD)  # "Rotraut" lies on the projector's best path: similarity 1
    per_entry = ListPlaceConfig(min_similarity=0.4)  # by_list_length: 0.4 for one entry, 1.2 for three
    assert per_entry.threshold(["Rotraut"]) == pytest.approx(0.4) and per_entry.threshold(["a", "b", "c"]) == \
        pytest.approx(1.2)
    assert place_spotted("I met today.", ["Rotraut"], heard, per_entry)[0] == "I met Rotraut today."
    long_list = ["Rotraut", "Zadoki", "Jedrzej"]
    assert place_spotted("I met today.", long_list, heard, per_entry)[0] == "I met today."  # 1 < 1.2
    fixed = ListPlaceConfig(min_similarity=0.4, by_list_length=False)
    assert place_spotted("I met today.", long_list, heard, fixed)[0] == "I met Rotraut today."
    assert fixed.grid != per_entry.grid and max(per_entry.grid) < max(fixed.grid)  # each rule tunes its own grid
    # a list filtered down to one entry keeps the prior of the whole list it came from
    assert place_spotted("I met today.", ["Rotraut"], heard, per_entry, list_length=3)[0] == "I met today."
    assert place_all(["I met today."] * 2, [["Rotraut"]] * 2, [heard] * 2, per_entry, lengths=[None, 3])[0] == \
        ["I met Rotraut today.", "I met today."]


class _Fixed:
    """A spotted utterance with fixed answers: the projector's best-path words ``(text, first, last frame)`` and
    each entry's ``(similarity, first, last frame)``."""

    def __init__(self, words, spans):
        self._words, self._spans = words, spans

    def words(self):
        return self._words

    def spans(self, entries):
        return [self._spans.get(e, (0.0, -1, -1)) for e in entries]


def test_a_name_the_answer_holds_where_it_was_not_heard_moves_where_it_was():
    heard = _Fixed([("I", 1, 1), ("met", 3, 3), ("brot", 5, 9), ("today", 11, 11)], {"Rotraut": (0.5, 5, 9)})
    assert place_spotted("Rotraut met brought out today.", ["Rotraut"], heard, ON) == \
        ("I met Rotraut today.", [("Rotraut", "I"), ("brought out", "Rotraut")])  # the projector's word goes back
    assert place_spotted("Rotraut met brought out today.", ["Rotraut"], heard,
                         ListPlaceConfig(min_similarity=0.5, move=False)) == ("Rotraut met brought out today.", [])
    stays = _Fixed([("I", 1, 1), ("met", 3, 3), ("Rotrau", 5, 9), ("today", 11, 11)], {"Rotraut": (0.5, 6, 8)})
    assert place_spotted("I met Rotraut today.", ["Rotraut"], stays, ON) == ("I met Rotraut today.", [])


def test_two_names_the_llm_swapped_change_places():
    heard = _Fixed([("I", 1, 1), ("met", 3, 3), ("Rotrau", 5, 7), ("Zadokix", 9, 10), ("today", 12, 12)],
                   {"Rotraut": (0.4, 5, 7), "Zadoki": (0.6, 9, 10)})
    low = ListPlaceConfig(min_similarity=0.1)  # 0.2 an entry for a list of two
    assert place_spotted("I met Zadoki Rotraut today.", ["Rotraut", "Zadoki"], heard, low)[0] == \
        "I met Rotraut Zadoki today."


def test_a_move_can_give_back_nothing_and_never_goes_into_a_gap():
    heard = _Fixed([("I", 1, 1), ("zz", 3, 5), ("brot", 8, 10), ("today", 12, 12)], {"Rotraut": (0.5, 8, 10)})
    assert place_spotted("I Rotraut met brought out today.", ["Rotraut"], heard, ON)[0] == "I Rotraut today."
    gap = _Fixed([("I", 1, 1), ("met", 3, 3), ("today", 11, 11)], {"Rotraut": (0.5, 6, 8)})
    assert place_spotted("Rotraut met today.", ["Rotraut"], gap, ON) == ("Rotraut met today.", [])
    beside = _Fixed([("El", 1, 2), ("Smith", 3, 4), ("still", 6, 9), ("Energy", 11, 12)], {"Delattre": (0.5, 6, 9)})
    assert place_spotted("Delattre Smith still Energy.", ["Delattre"], beside, ON, known={"still"})[0] == \
        "El Smith still Delattre Energy."  # heard over a word the answer keeps: it goes beside it


def test_a_name_heard_inside_a_longer_word_goes_on_the_side_it_was_heard():
    words = [("I", 1, 1), ("met", 3, 3), ("Rotzad", 5, 12), ("today", 14, 14)]
    late, early = _Fixed(words, {"Zadoki": (0.5, 10, 12)}), _Fixed(words, {"Zadoki": (0.5, 5, 7)})
    assert place_spotted("I met Rotraut today.", ["Zadoki"], late, ON)[0] == "I met Rotraut Zadoki today."
    assert place_spotted("I met Rotraut today.", ["Zadoki"], early, ON)[0] == "I met Zadoki Rotraut today."


def test_a_name_the_answer_holds_where_it_was_heard_keeps_its_words_from_a_weaker_entry():
    words = [("I", 1, 1), ("met", 3, 3), ("Zadok", 5, 7), ("today", 9, 9)]
    weak, strong = _Fixed(words, {"Zadoki": (0.3, 5, 7), "Rotraut": (0.2, 5, 7)}), \
        _Fixed(words, {"Zadoki": (0.3, 5, 7), "Rotraut": (0.6, 5, 7)})
    low = ListPlaceConfig(min_similarity=0.05)
    assert place_spotted("I met Zadoki today.", ["Zadoki", "Rotraut"], weak, low) == ("I met Zadoki today.", [])
    assert place_spotted("I met Zadoki today.", ["Zadoki", "Rotraut"], strong, low)[0] == "I met Rotraut today."


def test_an_entry_spotted_on_words_a_moved_name_gave_back_takes_them_all():
    heard = _Fixed([("I", 1, 1), ("met", 3, 3), ("Zado", 5, 6), ("in", 8, 8), ("the", 10, 10), ("bigro", 12, 15)],
                   {"Zadoki": (0.6, 5, 6), "Rotraut": (0.5, 12, 15)})
    low = ListPlaceConfig(min_similarity=0.05)
    assert place_spotted("I met Bro in the big Zadoki.", ["Zadoki", "Rotraut"], heard, low, known={"in", "the"})[0] \
        == "I met Zadoki in the Rotraut."  # "big Zadoki" overlaps the word Zadoki gave back: Rotraut takes both


def test_a_name_moves_beside_a_projector_word_its_frames_overlap():
    heard = _Fixed([("Sarai", 0, 5), ("and", 8, 8), ("Bre", 10, 10), ("He", 13, 13), ("the", 17, 17)],
                   {"Zadoki": (0.5, 3, 5)})
    assert place_spotted("Sara and Brenda Zadoki the", ["Zadoki"], heard, ON, known={"and", "the"})[0] == \
        "Sara Zadoki and Brenda He the"


def test_word_map_pairs_the_equal_words_that_fit_the_others_best():
    mapped = word_map(["testing", "inberg", "gfllin", "in", "perberg", "in", "august"],
                      ["testing", "in", "peronbourg", "in", "gruflim", "in", "august"])
    assert mapped[3] == (3, 4) and mapped[4] == (4, 5)  # not the first "in" for the one the projector heard
    assert mapped[1][0] == 1 and mapped[2] == (2, 3)


def test_placing_and_moving_only_ever_write_answer_list_or_projector_words():
    import random

    rng = random.Random(0)
    vocab = ["I", "met", "Rotraut", "today", "brought", "out", "Zadoki", "in", "Bro", "Zo"]
    for _ in range(3000):
        hyp = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 6)))
        pw, t = [], 0
        for w in rng.sample(vocab, rng.randint(0, 5)):
            t += rng.randint(1, 3)
            pw.append((w, t, t + rng.randint(0, 3)))
            t = pw[-1][2]
        entries = rng.sample(["Rotraut", "Zadoki", "Anna Maria"], rng.randint(1, 3))
        spans = {e: (rng.random(), f, f + rng.randint(0, 4)) for e in entries for f in [rng.randint(0, t + 2)]}
        text, edits = place_spotted(hyp, entries, _Fixed(pw, spans), ListPlaceConfig(min_similarity=0.01))
        allowed = set(hyp.split()) | {w for e in entries for w in e.split()} | {w for w, _, _ in pw}
        assert set(text.split()) <= allowed, (hyp, pw, spans, text)
        assert len(text.split()) <= len(hyp.split()) + sum(len(e.split()) for e in entries) + len(pw), (hyp, text)
        for e in ("Rotraut", "Zadoki"):  # never a second copy of a name
            assert text.split().count(e) <= max(1, hyp.split().count(e)), (hyp, pw, spans, text)
