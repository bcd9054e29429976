"""EncoderLockConfig's knobs, declared once (hf_encoderlock.lock.knobs): the defaults and help of every field the lock
declares are the ones captured before the knob groups were split out (tests/lock/config_before_issue26.json, written
on commit 8aa5cb5), and a knob declared on its group's dataclass alone reaches the flags, YAML, the validation and the
objective."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from transformers import HfArgumentParser

from hf_encoderlock.cli.lock import HELP_GROUPS, lock_argument_parser
from hf_encoderlock.lock.adversary_heads import AdversaryConfig
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.knobs import Interval, flag_fields, flag_names, knob, knob_fields
from hf_encoderlock.lock.objectives import InformationObjective, InformationTermsConfig, build_objective
from hf_encoderlock.lock.variants.augmentations import AugmentationConfig

BEFORE = json.loads((Path(__file__).parent / "config_before_issue26.json").read_text(encoding="utf-8"))


# Lock fields added after the fixture was captured, with their defaults (which keep the lock as it was).
ADDED_SINCE_FIXTURE = {
    "selection_unit": "weight",
    "bound_aware_scores": False,
    "weight_budget_share": None,
    "colour_map_every": 0,
    "prohibited_view_batches": False,
    "bound_jitter": 0.0,
}
# Fields recorded as hyperparameters when the fixture was captured that no longer are (they do not change the lock).
NO_LONGER_HYPERPARAMETERS = ("overwrite_output_dir",)
# Help texts that list a registry's choices, which grew after the fixture (the field's default did not change).
GROWN_CHOICES_SINCE_FIXTURE = {"score_function": "'prohibited_gradient'"}
# Help texts rewritten after the fixture to say what the flag does in a lock (the field's default did not change).
REWORDED_SINCE_FIXTURE = ("save_strategy", "prohibited_batch_factor", "prohibited_transforms", "weight_bound")
# Defaults changed after the fixture, each with its reason in docs/DEFAULT_LOCK.md (and its help rewritten).
CHANGED_DEFAULTS_SINCE_FIXTURE = {"prohibited_batch_factor": 1, "info_whitening_shrinkage": 1.0}  # the main job's time


def test_every_declared_default_help_and_hyperparameter_is_unchanged():
    config = EncoderLockConfig()
    dumped = config.to_dict()
    fields = EncoderLockConfig.__dataclass_fields__
    assert {name: dumped[name] for name in BEFORE["defaults"]} == {
        **BEFORE["defaults"],
        **CHANGED_DEFAULTS_SINCE_FIXTURE,
    }
    unchanged = {
        name: text
        for name, text in BEFORE["help"].items()
        if name not in GROWN_CHOICES_SINCE_FIXTURE and name not in REWORDED_SINCE_FIXTURE
    }
    assert {name: fields[name].metadata.get("help") for name in unchanged} == unchanged
    for name, choice in GROWN_CHOICES_SINCE_FIXTURE.items():
        assert fields[name].metadata["help"] == BEFORE["help"][name].replace(")", f", {choice})", 1)
    # the lock's own fields are exactly the ones it had (none lost, none added by the split), and the later ones
    expected = {**BEFORE["lock_hyperparameters"], **ADDED_SINCE_FIXTURE, **CHANGED_DEFAULTS_SINCE_FIXTURE}
    expected = {name: value for name, value in expected.items() if name not in NO_LONGER_HYPERPARAMETERS}
    assert sorted(config.lock_hyperparameters()) == sorted(expected)
    assert json.loads(json.dumps(config.lock_hyperparameters())) == expected


# --- a knob is declared once, on its group's dataclass, and reaches the parser, the validation and the objective --


def _other(value, spec):
    """A valid value of the knob ``spec`` other than ``value`` (its default)."""
    if isinstance(value, (list, tuple)):
        choices = spec.metadata.get("choices")
        return type(value)(choices[:1]) if choices else type(value)(_other(one, spec) for one in value)
    if isinstance(value, int):
        return value + 1
    return value / 2 if value else 0.5


def _unworkable(value, spec):
    """A value of the knob ``spec`` that its declaration refuses."""
    if isinstance(value, (list, tuple)):
        return [] if "choices" in spec.metadata else [*value[:-1], float("nan")]
    interval = spec.metadata["range"]
    return interval.low if interval.low_open else interval.low - 1


KNOBS = [(group, spec) for group in EncoderLockConfig.knob_groups for spec in knob_fields(group)]


@pytest.mark.parametrize("group, spec", KNOBS, ids=[group.flag_prefix + spec.name for group, spec in KNOBS])
def test_every_knob_reaches_the_parser_the_validation_and_its_group(tmp_path, group, spec):
    flag = group.flag_prefix + spec.name
    default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    action = next(action for action in lock_argument_parser()._actions if action.dest == flag)
    assert action.help == group.flag_help + spec.metadata["help"]
    assert action.default == (list(default) if isinstance(default, tuple) else default)
    with pytest.raises(ValueError, match=rf"invalid EncoderLockConfig: .*{flag} must be"):
        EncoderLockConfig(output_dir=str(tmp_path), **{flag: _unworkable(default, spec)})
    other = _other(default, spec)
    config = EncoderLockConfig(output_dir=str(tmp_path), **{flag: list(other) if isinstance(other, tuple) else other})
    assert getattr(group.from_lock_config(config), spec.name) == other
    if group is InformationTermsConfig:  # what the objective the config builds reads
        assert getattr(build_objective(config).config, spec.name) == other


@dataclass
class TermsWithANewKnob(InformationTermsConfig):
    """A knob added the way every knob is: one ``knob(...)`` line on its group's dataclass."""

    sharpness: float = knob(0.5, range="(0, 1)", help="a knob declared only here.")


@dataclass
class ConfigWithANewKnob(flag_fields(TermsWithANewKnob), EncoderLockConfig):
    knob_groups = (TermsWithANewKnob, AugmentationConfig, AdversaryConfig)


def test_a_knob_declared_on_its_group_alone_is_a_flag_a_yaml_key_validated_and_read_by_the_objective(tmp_path):
    parser = HfArgumentParser(ConfigWithANewKnob)
    action = next(action for action in parser._actions if action.dest == "info_sharpness")
    assert action.help == "objective='information': a knob declared only here." and action.default == 0.5
    (config,) = parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), "--info-sharpness", "0.25"])
    assert InformationObjective(TermsWithANewKnob.from_lock_config(config)).config.sharpness == 0.25
    path = tmp_path / "lock.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "info_sharpness": 0.75}))
    (config,) = parser.parse_yaml_file(str(path))
    assert config.lock_hyperparameters()["info_sharpness"] == 0.75  # recorded in encoderlock_config.json
    for bad in (1.0, float("nan"), "sharp"):
        with pytest.raises(ValueError, match="info_sharpness must be a finite number in \\(0, 1\\)"):
            ConfigWithANewKnob(output_dir=str(tmp_path), info_sharpness=bad)
    with pytest.raises(ValueError, match="invalid TermsWithANewKnob: sharpness must be"):
        TermsWithANewKnob(sharpness=0.0)  # the group validates itself from the same declaration


def test_a_group_refuses_what_its_declarations_refuse_and_joint_rules_name_the_flags(tmp_path):
    with pytest.raises(ValueError, match=r"invalid InformationTermsConfig: ridge must be a finite number > 0"):
        InformationTermsConfig(ridge=-1.0)
    with pytest.raises(ValueError, match="invalid AdversaryConfig: kinds must be a non-empty list of values from"):
        AdversaryConfig(kinds=["knn"])
    with pytest.raises(ValueError, match=r"crop_scale must be a list of 2 finite numbers in \(0, 1\]"):
        AugmentationConfig(crop_scale=(0.5,))
    with pytest.raises(ValueError, match="info_r2_weight, info_mmd_weight and info_knn_weight must not all be 0"):
        EncoderLockConfig(output_dir=str(tmp_path), info_r2_weight=0.0, info_mmd_weight=0.0, info_knn_weight=0.0)
    with pytest.raises(ValueError, match="augment_crop_scale must be \\[low, high\\] with low <= high"):
        EncoderLockConfig(output_dir=str(tmp_path), augment_crop_scale=[0.8, 0.2])
    with pytest.raises(ValueError, match="declare a flag name twice"):
        flag_fields(InformationTermsConfig, InformationTermsConfig)


@pytest.mark.parametrize(
    "text, inside, outside, words",
    [
        ("[0, inf)", [0, 1e9], [-1e-9], ">= 0"),
        ("(0, 1]", [1e-9, 1], [0, 1.5], "in (0, 1]"),
        ("(0, inf)", [1], [0], "> 0"),
    ],
)
def test_interval_reads_as_written(text, inside, outside, words):
    interval = Interval.parse(text)
    assert all(value in interval for value in inside) and not any(value in interval for value in outside)
    assert str(interval) == words
    with pytest.raises(ValueError, match="not an interval"):
        Interval.parse("0..1")


def test_the_help_groups_list_each_knob_group_from_its_dataclass():
    listed = [name for names in HELP_GROUPS.values() for name in names]
    assert all(flag in listed for group in EncoderLockConfig.knob_groups for flag in flag_names(group))
