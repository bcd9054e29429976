"""examples/lock_other_models.py: a ResNet built from its config and a plain nn.Module go through the same lock."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lock_other_models.py"


def test_lock_other_models_example_locks_saves_reloads_and_probes(tmp_path):
    spec = importlib.util.spec_from_file_location("lock_other_models_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--images", "48", "--num_rounds", "1", "--output_dir", str(tmp_path)])
    assert set(results) == {"resnet", "plain-module"}
    for name in results:
        assert (tmp_path / name / "encoderlock_config.json").is_file()
        assert all(0.0 <= value <= 1.0 for value in results[name].values())
    assert (tmp_path / "plain-module" / "encoderlock_module.json").is_file()
    assert (tmp_path / "resnet" / "config.json").is_file()
