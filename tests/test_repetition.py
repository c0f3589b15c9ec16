"""The repetition guard (`decoding.repetition`): the cut, and stopping a decoder as soon as the cut is fixed."""
import random

from speechlm_lib.decoding.repetition import cut_repetitions, first_loop, loop_closed


def test_a_loop_is_cut_after_its_third_copy():
    assert cut_repetitions("sure if sure if sure if sure if sure") == "sure if sure if sure if"
    assert cut_repetitions("no no no") == "no no no"  # three copies are allowed
    assert first_loop("a b c".split(), 4, 3) is None


def test_a_loop_is_closed_only_once_a_word_follows_its_fourth_copy():
    assert not loop_closed("sure if sure if sure if sure")  # "sure" may still become "surely"
    assert not loop_closed("sure if sure if sure if sure i")
    assert loop_closed("sure if sure if sure if sure if and")
    assert not loop_closed("one two three four")
    assert not loop_closed("no no no no")  # the last "no" may be the start of "none"


def _answer(rng: random.Random) -> list[str]:
    """Words from a tiny vocabulary, with loops of 1-6 words spliced in: many near-loops and overlaps."""
    vocab = ["ab", "a", "abc", "B,", "b."][: rng.randint(2, 5)]  # prefixes of each other: a cut-short word
    words = [rng.choice(vocab) for _ in range(rng.randint(0, 12))]
    for _ in range(rng.randint(0, 2)):
        unit = [rng.choice(vocab) for _ in range(rng.randint(1, 6))]
        at = rng.randint(0, len(words))
        words[at:at] = unit * rng.randint(2, 5)
    return words


def test_stopping_where_a_loop_closes_gives_the_cut_of_the_whole_answer():
    """For every prefix of an answer, with its last word possibly cut short (a decoder mid-word): once
    `loop_closed` says stop, cutting the prefix gives exactly what cutting the whole answer gives."""
    rng, stopped = random.Random(0), 0
    for _ in range(3000):
        words = _answer(rng)
        whole = cut_repetitions(" ".join(words))
        for k in range(1, len(words) + 1):
            last = words[k - 1][: rng.randint(1, len(words[k - 1]))]
            partial = " ".join(words[: k - 1] + [last])
            if loop_closed(partial):
                assert cut_repetitions(partial) == whole, (words, k, partial)
                stopped += 1
                break
    assert stopped > 500  # the draw holds many loops
