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
    assert config.max_steps == 4 * config.update_steps_per_round + config.repair_steps
    assert config.lock_steps == 4 * config.update_steps_per_round
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


def test_the_bounded_example_config_sets_only_the_bounded_levers():
    experiment, lock = parse_lock_args(["--config", str(DEFAULT_YAML.with_name("bounded.yaml"))])
    default_experiment, default_lock = parse_lock_args([])
    assert experiment == default_experiment
    changed = {key: value for key, value in lock.to_dict().items() if value != default_lock.to_dict()[key]}
    assert changed == {
        "weight_bound": 2.5,
        "bound_aware_scores": True,
        "score_function": "prohibited_gradient",
        "authorized_projection": None,
        "learning_rate": 0.01,
        "layers_per_round": 6,
        "prohibited_batch_factor": 2,
        "info_whitening_shrinkage": 0.1,
        "prohibited_transforms": [
            *("greyscale", "match_image_stats", "match_domain_stats"),
            *("permute_channels:5", "permute_channels:3", "permute_channels:4"),
        ],
    }


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


NAN = float("nan")
# (field, a value that cannot work): each is refused at construction, naming the field
UNWORKABLE = [
    ("num_rounds", 2.5),
    ("num_rounds", True),
    ("weights_per_round", 0),
    ("layers_per_round", "2"),
    ("update_steps_per_round", 0),
    ("prohibited_batch_factor", 0),
    ("prohibited_batch_factor", 1.5),
    ("score_batches", 1.5),
    ("challenge_every", -1),
    ("adversary_seeds", 0),
    ("adversary_epochs", 0),
    ("adversary_hidden_size", 0),
    ("num_pseudo_classes", 1),
    ("pseudo_label_restarts", 0),
    ("zero_shot_images", 8),
    ("finetune_aware_steps", -1),
    ("repair_steps", -1),
    ("repair_steps", 1.5),
    ("repair_learning_rate", 0.0),
    ("unprojected_learning_rate", 0.0),
    ("unprojected_learning_rate", NAN),
    ("max_authorized_drift", -0.1),
    ("max_authorized_drift", float("inf")),
    ("per_device_train_batch_size", 0),
    ("learning_rate", NAN),
    ("learning_rate", -1e-3),
    ("learning_rate", float("inf")),
    ("weight_decay", -0.1),
    ("alpha", NAN),
    ("alpha", 0.0),
    ("objective_eps", 0.0),
    ("score_eps", -1.0),
    ("info_ridge", NAN),
    ("info_knn_temperature", 0.0),
    ("contrastive_temperature", NAN),
    ("finetune_aware_lr", 0.0),
    ("finetune_aware_weight", -1.0),
    ("info_r2_weight", NAN),
    ("info_mmd_weight", -1.0),
    ("info_preserve_weight", NAN),
    ("info_authorized_weight", -1.0),
    ("info_whitening_shrinkage", NAN),
    ("info_whitening_shrinkage", 1.5),
    ("info_whitening_shrinkage", 0.0),
    ("augment_brightness", NAN),
    ("augment_noise", -0.1),
    ("augment_crop_scale", [0.5, NAN]),
    ("augment_crop_scale", [0.8, 0.2]),
    ("validation_fraction", NAN),
    ("weight_budget_share", 0.0),
    ("weight_budget_share", 1.5),
    ("weight_budget_share", NAN),
    ("magnitude_gate", NAN),
    ("info_mmd_bandwidths", []),
    ("info_mmd_bandwidths", [1.0, NAN]),
    ("adversary_kinds", []),
    ("adversary_kinds", ["knn"]),
    ("adversary_learning_rates", []),
    ("adversary_learning_rates", [1e-2, -1e-3]),
    ("zero_shot_generators", []),
    ("zero_shot_generators", ["shiftz"]),
    ("candidate_module_types", []),
    ("candidate_name_patterns", ["blocks.(0"]),
    ("candidate_name_patterns", "encoder"),
    ("candidate_blocks", [0, 1.5]),
    ("candidate_blocks", [-2]),
    ("prohibited_poolings", ["cls", "bogus"]),
    ("prohibited_poolings", ["auto", "cls"]),
    ("variant", "semi-supervised"),
    ("objective", "nope"),
    ("score_function", "random"),
    ("best_model_criterion", "best"),
    ("hub_gated", "yes"),
]


@pytest.mark.parametrize("name, value", UNWORKABLE, ids=[f"{name}={value!r}" for name, value in UNWORKABLE])
def test_every_unworkable_value_is_refused_at_construction_naming_its_field(tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"invalid EncoderLockConfig: .*{name}"):
        EncoderLockConfig(output_dir=str(tmp_path), **{name: value})
    assert not any(tmp_path.iterdir())  # nothing written


def test_every_problem_is_reported_at_once_and_working_values_pass(tmp_path):
    with pytest.raises(ValueError) as refused:
        EncoderLockConfig(output_dir=str(tmp_path), num_rounds=2.5, learning_rate=NAN, adversary_kinds=[])
    assert all(field in str(refused.value) for field in ("num_rounds", "learning_rate", "adversary_kinds"))
    working = dict(
        candidate_name_patterns=[r"encoder\.layer\.\d+\."],
        candidate_blocks=[-1, 0, 3],
        prohibited_poolings=["cls", "mean"],
        magnitude_gate=0.5,
        challenge_every=0,
        finetune_aware_steps=0,
    )
    assert EncoderLockConfig(output_dir=str(tmp_path), **working).candidate_blocks == [-1, 0, 3]
    assert EncoderLockConfig(output_dir=str(tmp_path), prohibited_poolings=None).prohibited_poolings is None


@pytest.mark.parametrize(
    "variant, given, threshold",
    [
        ("supervised", "auto", 0.01),
        ("unsupervised", "auto", 0.02),
        ("zero-shot", "auto", 0.05),
        ("zero-shot", 0.2, 0.2),
        ("supervised", "0.3", 0.3),  # a command-line flag arrives as text
        ("supervised", "none", None),
        ("supervised", None, None),
    ],
)
def test_authorized_projection_resolves_per_variant_and_reads_flags(tmp_path, variant, given, threshold):
    config = EncoderLockConfig(output_dir=str(tmp_path), variant=variant, authorized_projection=given)
    assert config.projection_threshold() == threshold
    # encoderlock_config.json (and the card) record what "auto" meant next to the field itself
    assert config.lock_hyperparameters()["authorized_projection_threshold"] == threshold


@pytest.mark.parametrize("bad", ["off", -0.1, NAN])
def test_bad_authorized_projection_is_refused_by_name(tmp_path, bad):
    with pytest.raises(ValueError, match="authorized_projection must be 'auto', None or a number >= 0"):
        EncoderLockConfig(output_dir=str(tmp_path), authorized_projection=bad)


def test_prohibited_transforms_with_a_strength_out_of_range_are_refused_naming_the_entry():
    # found on the user's path: "permute_channels:9" passed the check and crashed after the "before" probes
    with pytest.raises(ValueError, match=r"'permute_channels:9': transform 'permute_channels' takes a whole number"):
        EncoderLockConfig(output_dir="unused", prohibited_transforms=["greyscale", "permute_channels:9"])
    assert EncoderLockConfig(output_dir="unused", prohibited_transforms=["permute_channels:3"]).prohibited_transforms
