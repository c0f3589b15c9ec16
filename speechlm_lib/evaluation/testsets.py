"""Named test sets, each a list of `Utterance`s, from any `DataSource`.

================  =========================================================================================
``synthetic``     the synthetic corpus's English test split (voices and names never heard in training)
``synthetic_de``  its German test split
``snr20`` ...     the English test split with white noise at 20 / 10 / 5 dB SNR (`noise.noisy_copies`)
``speechocean``   speechocean762's held-out speakers (split by speaker; absent -> an empty set)
================  =========================================================================================

`from_source` reads any other: a manifest folder or a `datasets` corpus (`data.sources.DataSource`).
"""
from __future__ import annotations

from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.sources import DataSource, load_source
from speechlm_lib.registry import Registry

TEST_SETS = Registry("test set")
SNRS = (20, 10, 5)


def from_source(src: DataSource, split: str = "test", corpus_profile: str | None = None,
                limit: int | None = None, report: Report | None = None) -> list[Utterance]:
    """One split of a data source (a manifest folder, a `datasets` corpus, the synthetic corpus)."""
    splits = load_source(src, report, corpus_profile=corpus_profile)
    if split not in splits:
        raise KeyError(f"{src.kind} source {src.name or ''}: no split {split!r}; it has {sorted(splits)}")
    return splits[split][:limit]


@TEST_SETS.register("synthetic")
def _synthetic(profile: str, limit: int | None = None, report: Report | None = None) -> list[Utterance]:
    return from_source(DataSource(splits={"test": "test"}), "test", profile, limit, report)


@TEST_SETS.register("synthetic_de")
def _synthetic_de(profile: str, limit: int | None = None, report: Report | None = None) -> list[Utterance]:
    return from_source(DataSource(splits={"test": "test_de"}), "test", profile, limit, report)


def _noisy(snr: float):
    def build(profile: str, limit: int | None = None, report: Report | None = None) -> list[Utterance]:
        from speechlm_lib.evaluation.noise import noisy_copies

        return noisy_copies(_synthetic(profile, limit, report), snr, report=report)

    return build


for _snr in SNRS:
    TEST_SETS.register(f"snr{_snr}")(_noisy(_snr))


@TEST_SETS.register("speechocean")
def _speechocean(profile: str, limit: int | None = None, report: Report | None = None) -> list[Utterance]:
    from speechlm_lib.recipes.stage3_lora import real_speech_test

    return real_speech_test(limit=limit, report=report)


def load_test_sets(names, profile: str, limit: int | None = None, report: Report | None = None,
                   say=print) -> dict[str, list[Utterance]]:
    """``{name: utterances}`` for the named sets; an empty one (speechocean762 absent) is left out with a line."""
    out = {}
    for name in names:
        utts = TEST_SETS.build(name, profile, limit, report)
        if utts:
            out[name] = utts
        else:
            say(f"test set {name}: no utterances here (absent data), skipped")
    return out
