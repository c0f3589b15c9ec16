"""Stage-2 presets and `Stage2Config.override` (the benchmarks' ``--set key=value``)."""
import pytest

from speechlm_lib.speechlm_config import PRESETS, Stage2Config


def test_presets_build_and_differ():
    sizes = {name: Stage2Config.preset(name).train.max_steps for name in PRESETS}
    assert sizes["smoke"] < sizes["cpu"] < sizes["gpu"]
    with pytest.raises(KeyError, match="unknown stage-2 preset 'laptop'"):
        Stage2Config.preset("laptop")


def test_override_sets_nested_values_as_literals_or_text():
    base = Stage2Config.preset("cpu")
    cfg = base.override(["train.max_steps=7", "train.lr=2e-3", "data.test_limit=None",
                         "model.llm=some/dir-or-hub-id", "model.projector_kwargs={'hidden': 64, 'hard': False}",
                         "pretrain.max_steps=3"])
    assert cfg.train.max_steps == 7 and cfg.train.lr == 2e-3 and cfg.data.test_limit is None
    assert cfg.model.llm == "some/dir-or-hub-id"
    assert cfg.model.projector_kwargs == {"hidden": 64, "hard": False}
    assert cfg.pretrain.max_steps == 3
    assert base.train.max_steps == Stage2Config.preset("cpu").train.max_steps != 7  # the preset is untouched
    assert base.model.projector_kwargs["hidden"] == 1024


@pytest.mark.parametrize("item, error, words", [
    ("train.max_step=7", KeyError, "unknown setting 'train.max_step'"),
    ("optimizer.lr=1", KeyError, "unknown setting 'optimizer.lr'"),
    ("train.max_steps", ValueError, "not key=value"),
])
def test_override_rejects_unknown_keys_clearly(item, error, words):
    with pytest.raises(error, match=words):
        Stage2Config.preset("cpu").override([item])


def test_override_cannot_set_into_a_missing_section():
    cfg = Stage2Config.preset("cpu").override(["pretrain=None"])
    assert cfg.pretrain is None
    with pytest.raises(KeyError, match="pretrain.max_steps"):
        cfg.override(["pretrain.max_steps=5"])
