"""EncoderLockConfig (hf_encoderlock.lock.config): YAML round trip, the reference preset, validation, one set of
defaults, --config with flags, from_pretrained."""

from pathlib import Path

import pytest
import yaml
from transformers import HfArgumentParser

from hf_encoderlock.cli.lock import ConfigFileError, parse_lock_args
from hf_encoderlock.lock.config import EncoderLockConfig


def test_config_yaml_round_trip_and_reference_preset(tmp_path):
    path = tmp_path / "lock.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "num_rounds": 4, "adversary_kinds": ["mlp"]}))
    (config,) = HfArgumentParser(EncoderLockConfig).parse_yaml_file(str(path))
    assert config.num_rounds == 4 and config.adversary_kinds == ["mlp"]
    assert config.max_steps == 4 * config.update_steps_per_round
    reference = EncoderLockConfig.reference(output_dir=str(tmp_path))
    assert (reference.weights_per_round, reference.layers_per_round, reference.alpha, reference.learning_rate) == (
        100,
        1,
        1e3,
        1e-2,
    )
    with pytest.raises(ValueError, match="num_rounds"):
        EncoderLockConfig(output_dir=str(tmp_path), num_rounds=0)


DEFAULT_YAML = Path(__file__).resolve().parents[2] / "examples" / "configs" / "default.yaml"


def test_python_defaults_example_defaults_and_default_yaml_are_one_set():
    from_flags = parse_lock_args([])  # what `encoderlock lock` and examples/lock_vit.py run without arguments
    from_yaml = parse_lock_args(["--config", str(DEFAULT_YAML)])
    assert from_flags[0] == from_yaml[0]
    assert from_flags[1].to_dict() == from_yaml[1].to_dict() == EncoderLockConfig().to_dict()
    written = yaml.safe_load(DEFAULT_YAML.read_text())
    experiment, lock = from_flags
    for key, value in written.items():  # every value the file spells out is a default, not an override
        default = getattr(lock, key) if hasattr(lock, key) else getattr(experiment, key)
        assert default == value or (key == "report_to" and default == [] and value == "none"), key


def test_config_file_then_flags_flags_win(tmp_path):
    path = tmp_path / "mine.yaml"
    values = {"num_rounds": 4, "prohibited": "letters", "objective": "paper", "prohibited_poolings": None}
    path.write_text(yaml.safe_dump(values))
    experiment, lock = parse_lock_args(["--config", str(path), "--num_rounds", "6"])
    assert (lock.num_rounds, lock.objective, experiment.prohibited) == (6, "paper", "letters")
    assert lock.weights_per_round == EncoderLockConfig().weights_per_round  # untouched values stay the defaults
    experiment, lock = parse_lock_args([str(path)])  # a lone file works as --config FILE
    assert lock.num_rounds == 4
    path.write_text(yaml.safe_dump({"num_round": 4}))
    with pytest.raises(ConfigFileError, match="num_round"):
        parse_lock_args(["--config", str(path)])
    with pytest.raises(ConfigFileError, match="no such file"):
        parse_lock_args(["--config", str(tmp_path / "missing.yaml")])


def test_from_pretrained_reruns_a_lock_with_its_settings(tmp_path, tiny_trainer):
    _, trainer = tiny_trainer(objective="information", num_rounds=1, weights_per_round=7)
    trainer.train()
    trainer.save_model()
    again = EncoderLockConfig.from_pretrained(trainer.args.output_dir, output_dir=str(tmp_path / "again"))
    assert (again.objective, again.num_rounds, again.weights_per_round) == ("information", 1, 7)
    assert again.prohibited_poolings == trainer.args.prohibited_poolings and again.seed == trainer.args.seed
    assert again.output_dir == str(tmp_path / "again")
    with pytest.raises(FileNotFoundError, match="encoderlock_config.json"):
        EncoderLockConfig.from_pretrained(tmp_path)
