"""CTC keyword spotting of list entries in the projector's posteriors (decoding/keyword_spot.py)."""
import math

import pytest
import torch

from speechlm_lib.decoding.keyword_spot import KeywordSpotter, spellings, spot_scores
from speechlm_lib.decoding.list_filter import ListFilterConfig, Spotted, filter_list


def _posteriors(path: list[int], classes: int = 5, off: float = -5.0) -> torch.Tensor:
    """Log-posteriors ``(frames, classes)`` whose best path is `path` (0 = blank)."""
    logits = torch.full((len(path), classes), off)
    for t, c in enumerate(path):
        logits[t, c] = 0.0
    return logits.log_softmax(-1)


def test_a_sequence_on_the_best_path_scores_zero_anywhere_in_the_utterance():
    logp = _posteriors([0, 2, 2, 0, 3, 0, 1, 1])  # best path: 2 3 1
    s = spot_scores(logp, [[2, 3], [3, 1], [2, 3, 1], [2, 1], [4], [1, 3]]).tolist()
    assert s[:3] == [0.0, 0.0, 0.0]  # any stretch of the best path, at its start, middle or end
    assert s[3] == pytest.approx(-5.0) and s[4] == pytest.approx(-5.0)  # one frame off the best path
    assert s[5] == pytest.approx(-5.0)  # 1 then 3: the 1 borrowed from a blank frame before the 3
    assert spot_scores(logp, [[1, 1, 1, 1, 1]]).item() == -math.inf  # needs 9 frames between its repeats: no fit
    assert spot_scores(logp, []).numel() == 0


def test_spellings_use_the_tokenizers_pieces_or_the_fewest_the_projector_knows():
    pieces = {" Cro": 1, "lov": 2, "re": 3, " C": 4, "ro": 5, "l": 6, "o": 7, "v": 8}
    lookup = {101: 1, 102: 2, 103: 3, 104: 4, 105: 5, 106: 6, 107: 7, 108: 8}
    own = lambda text: [104, 105, 106, 107, 108, 103]  # noqa: E731 - the tokenizer: " C" "ro" "l" "o" "v" "re"
    assert spellings("Crolovre", own, pieces, lookup) == [[4, 5, 6, 7, 8, 3], [1, 2, 3]]
    unknown = lambda text: [999]  # noqa: E731 - a piece the projector cannot emit
    assert spellings("Crolovre", unknown, pieces, lookup) == [[1, 2, 3]]
    assert spellings("Zed", unknown, pieces, lookup) == []  # no piece spells "Z"


def test_the_spotter_scores_entries_per_piece_and_the_ctc_filter_keeps_the_heard_one():
    texts = {11: " Cro", 12: "lov", 13: "re", 14: " Zad", 15: "oki"}
    spotter = KeywordSpotter(lambda text: [], [11, 12, 13, 14, 15], texts.get)  # classes 1..5
    logp = _posteriors([0, 1, 0, 2, 2, 3, 0], classes=6)  # the projector heard " Cro" "lov" "re"
    sims = spotter.similarities(logp, ["Crolovre", "Zadoki", "Qwerty"])
    assert sims[0] == 1.0 and 0 < sims[1] < 0.01 and sims[2] == 0.0  # on the path, off it, unspellable
    heard = Spotted(logp, spotter)
    cfg = ListFilterConfig(keep=1, min_score=0.0, match="ctc")
    assert filter_list(["Zadoki", "Crolovre", "Qwerty"], heard, cfg) == ["Crolovre"]
    assert filter_list(["Zadoki", "Qwerty"], heard, ListFilterConfig(keep=2, min_score=0.02, match="ctc")) == []
    with pytest.raises(ValueError, match="needs a Spotted utterance, got str"):
        filter_list(["Zadoki"], "the projector's text", cfg)
    with pytest.raises(ValueError, match="needs the projector transcript, got Spotted"):
        filter_list(["Zadoki"], heard, ListFilterConfig(keep=1))
