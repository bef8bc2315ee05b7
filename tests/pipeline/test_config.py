"""The config system: YAML + overrides into typed dataclasses, with errors that name the field and value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.config import (
    ConfigError,
    config_to_dict,
    field_docs,
    load_config,
    parse_job_args,
    require,
)
from pipeline.storage import open_storage


@dataclass
class OptimConfig:
    lr: float = 6e-5
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule."""

    def __post_init__(self):
        require(self.lr > 0, "lr", self.lr, "must be > 0")


@dataclass
class DemoConfig:
    name: str = "run"
    """Run name."""
    steps: int = 10
    """Training steps."""
    use_gpu: bool = False
    """Train on GPUs."""
    init: str | None = None
    """Checkpoint to start from."""
    sizes: list[int] = field(default_factory=lambda: [128, 256])
    """Input sizes."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser settings."""

    def __post_init__(self):
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "steps: 20\noptim:\n  lr: 1.0e-4\n  schedule: cosine\n")
    cfg = load_config(
        DemoConfig,
        path,
        ["optim.lr=3e-4", "use_gpu=true", "sizes=[64, 96]", "init=null", "name=123", "optim.betas=0.8,0.9"],
    )
    assert cfg.steps == 20 and cfg.optim.schedule == "cosine"
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.use_gpu is True and cfg.init is None and cfg.sizes == [64, 96]
    assert cfg.name == "123" and cfg.optim.betas == (0.8, 0.9)
    assert config_to_dict(cfg)["optim"] == {"lr": 3e-4, "betas": [0.8, 0.9], "schedule": "cosine"}


def test_defaults_without_file():
    assert load_config(DemoConfig) == DemoConfig()


@pytest.mark.parametrize(
    "override, field_name, value",
    [
        ("steps=0", "steps", 0),
        ("optim.lr=-1", "optim.lr", -1.0),
        ("optim.schedule=linear", "optim.schedule", "linear"),
        ("steps=ten", "steps", "ten"),
        ("use_gpu=maybe", "use_gpu", "maybe"),
        ("optim.betas=[1]", "optim.betas", [1]),
    ],
)
def test_errors_name_field_and_value(override, field_name, value):
    with pytest.raises(ConfigError) as info:
        load_config(DemoConfig, None, [override])
    assert info.value.field == field_name
    assert info.value.value == value
    assert f"'{field_name}'" in str(info.value) and repr(value) in str(info.value)


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr.*did you mean 'lr'"):
        load_config(DemoConfig, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="'bogus'.*unknown config key"):
        load_config(DemoConfig, write(tmp_path, "bogus: 1\n"))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(DemoConfig, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(DemoConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DemoConfig, write(tmp_path, "a: [1,\n"))


def test_every_field_has_a_docstring():
    assert set(field_docs(DemoConfig)) == {"name", "steps", "use_gpu", "init", "sizes", "optim"}
    assert field_docs(OptimConfig)["lr"] == "Learning rate."


def test_parse_job_args_precedence(tmp_path, capsys):
    path = write(tmp_path, "steps: 5\nname: from-yaml\n")
    flags = {"--run-name": "name", "--use-gpu": ("use_gpu", True), "--lr": "optim.lr"}
    cfg = parse_job_args(
        DemoConfig,
        ["--config", path, "--run-name", "from-flag", "--use-gpu", "--lr", "0.01", "--set", "steps=7"],
        flags=flags,
    )
    assert (cfg.name, cfg.steps, cfg.use_gpu, cfg.optim.lr) == ("from-flag", 7, True, 0.01)
    cfg = parse_job_args(DemoConfig, ["--config", path, "--run-name", "x", "--set", "name=y"], flags=flags)
    assert cfg.name == "y"  # --set wins over shortcut flags
    with pytest.raises(SystemExit):
        parse_job_args(DemoConfig, ["--print-config", "--set", "steps=3"], flags=flags)
    assert "steps: 3" in capsys.readouterr().out


def test_config_file_from_s3(s3_bucket):
    st = open_storage(s3_bucket)
    st.write_text("configs/run.yaml", "steps: 42\n")
    assert load_config(DemoConfig, st.join("configs/run.yaml")).steps == 42


def test_config_errors_survive_pickling_as_ray_sends_them():
    """A ConfigError raised in a Ray worker is pickled to the driver: it must arrive whole, not as a TypeError."""
    import pickle

    from model import SettingError

    for error in (
        ConfigError("optim.lr", -1.0, "must be > 0"),
        SettingError("input_size", 100, "must be ..."),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert (again.field, again.value, again.reason) == (error.field, error.value, error.reason)


def test_model_setting_errors_name_the_dotted_config_path():
    from pipeline.segment.config import SegmentConfig
    from pipeline.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"'model.input_size' = 100"):
        load_config(TrainConfig, None, ["model.input_size=100"])
    with pytest.raises(ConfigError, match=r"'model.options'"):
        load_config(
            SegmentConfig, None, ["input=a", "output=b", "model.checkpoint=c", "model.options={widht: 3}"]
        )
    with pytest.raises(ConfigError, match=r"'model.name' = 'hmhi_mit_b9'"):
        load_config(TrainConfig, None, ["model.name=hmhi_mit_b9"])


def test_an_override_inside_a_free_form_mapping_is_read_as_yaml_would():
    """``model.options`` is a free-form mapping: ``--set model.options.decoder_width=32`` sets the number 32 (a
    string there made the model's own checks fail with a TypeError), as the YAML file would."""
    from pipeline.train.config import TrainConfig

    cfg = load_config(
        TrainConfig,
        None,
        ["model.options.decoder_width=32", "model.options.readout_dropout=0.0", "model.options.topk=null"],
    )
    assert cfg.model.options == {"decoder_width": 32, "readout_dropout": 0.0, "topk": None}
    assert load_config(TrainConfig, None, ["run_name=007"]).run_name == "007"  # a typed field keeps its text
