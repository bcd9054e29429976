"""EncoderLockConfig (hf_encoderlock.lock.config): YAML round trip, the reference preset, validation."""

import pytest
import yaml
from transformers import HfArgumentParser

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
