"""Every stage's config: presets are YAML files in configs/, ``key=value`` overrides, and the resolved tree saved."""
import pytest

from speechlm_lib.config import StageConfig, configs_dir
from speechlm_lib.data.corpus import CorpusConfig
from speechlm_lib.experiments.stage2_compare import CompareConfig
from speechlm_lib.recipes.stage1_ctc import CTCStageConfig
from speechlm_lib.recipes.stage2_align import Stage2Config
from speechlm_lib.recipes.stage3_lora import Stage3Config
from speechlm_lib.recipes.stage4_context import Stage4Config

CONFIGS = [CorpusConfig, CTCStageConfig, Stage2Config, CompareConfig, Stage3Config, Stage4Config]


def test_every_config_folder_belongs_to_a_config_class():
    folders = {p.name for p in configs_dir().iterdir() if p.is_dir()} - {"accelerate"}  # launcher files, not a stage
    assert {c.config_name for c in CONFIGS} == folders


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.config_name)
def test_each_stage_has_the_three_profiles_and_they_round_trip(cls, tmp_path):
    assert {"smoke", "cpu", "gpu"} <= set(cls.presets())
    for name in cls.presets():
        cfg = cls.preset(name)
        assert isinstance(cfg, cls) and isinstance(cfg, StageConfig)
        assert cls.from_file(cfg.save(tmp_path / name)) == cfg  # saved and read back: the same tree


def test_presets_differ_in_size():
    sizes = {name: Stage2Config.preset(name).train.max_steps for name in ("smoke", "cpu", "gpu")}
    assert sizes["smoke"] < sizes["cpu"] < sizes["gpu"]
    assert Stage2Config.preset("cpu").pretrain.max_steps == 650  # the file, not the dataclass default
    assert CTCStageConfig.preset("smoke").threads == 1
    with pytest.raises(KeyError, match="unknown stage2_align preset 'laptop'.*cpu"):
        Stage2Config.preset("laptop")


def test_a_file_may_leave_fields_out_but_not_invent_them(tmp_path):
    partial = tmp_path / "mine.yaml"
    partial.write_text("train:\n  max_steps: 7\nmodel:\n  stride: 10\n")
    cfg = Stage2Config.from_file(partial)
    assert cfg.train.max_steps == 7 and cfg.model.stride == 10 and cfg.data.batch_size == 8  # defaults elsewhere
    bad = tmp_path / "typo.yaml"
    bad.write_text("train:\n  max_step: 7\n")
    with pytest.raises(ValueError, match=r"typo.yaml.*unknown TrainConfig setting\(s\): max_step"):
        Stage2Config.from_file(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        Stage2Config.from_file(tmp_path / "nowhere.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        Stage2Config.from_file(broken)


def test_tuples_come_back_as_tuples(tmp_path):
    cfg = CorpusConfig.preset("gpu")
    again = CorpusConfig.from_file(cfg.save(tmp_path / "c.yaml"))
    assert isinstance(again.sizes, tuple) and again.noise_snr_db == cfg.noise_snr_db
    assert isinstance(CompareConfig.preset("cpu").strides, tuple)


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
    assert CTCStageConfig.preset("smoke").override(["train.max_steps=3"]).train.max_steps == 3
    assert CorpusConfig.preset("smoke").override(["sizes=(4, 1, 1)"]).sizes == (4, 1, 1)


@pytest.mark.parametrize("item, error, words", [
    ("train.max_step=7", KeyError, "unknown setting 'train.max_step'"),
    ("optimizer.lr=1", KeyError, "unknown setting 'optimizer.lr'"),
    ("train.max_steps", ValueError, "not key=value"),
])
def test_override_rejects_unknown_keys_clearly(item, error, words):
    with pytest.raises(error, match=words):
        Stage2Config.preset("cpu").override([item])


def test_override_reads_yaml_switches_as_the_presets_write_them():
    """``--set train_projector=true`` once became the string "true" and crashed far from the command line."""
    from speechlm_lib.recipes.stage3_lora import Stage3Config

    base = Stage3Config.preset("cpu")
    assert base.override(["train_projector=true"]).train_projector is True
    assert base.override(["keep_best=False", "init_from=null"]).keep_best is False
    assert base.override(["init_from=null"]).init_from is None
    with pytest.raises(ValueError, match="'train_projector' is true or false, not 'maybe'"):
        base.override(["train_projector=maybe"])
    with pytest.raises(ValueError, match="true or false, not '1'"):
        base.override(["train_projector=1"])


def test_override_cannot_set_into_a_missing_section():
    cfg = Stage2Config.preset("cpu").override(["pretrain=None"])
    assert cfg.pretrain is None
    with pytest.raises(KeyError, match="pretrain.max_steps"):
        cfg.override(["pretrain.max_steps=5"])
