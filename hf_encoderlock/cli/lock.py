"""``encoderlock lock``: the main job (victim -> probes -> lock -> probes -> report), the same parser as
``examples/lock_vit.py``.

Every field of :class:`~hf_encoderlock.experiment.LockExperimentArguments` and
:class:`~hf_encoderlock.lock.config.EncoderLockConfig` (which includes all of ``transformers.TrainingArguments``) is
a flag, in ``--snake_case`` or ``--kebab-case``. ``--config FILE`` (YAML or JSON) sets values that flags then
override; a lone ``FILE.yaml`` / ``FILE.json`` argument works as ``--config FILE``. ``--help`` lists the main job's
own flags by group; ``--help-all`` adds every ``TrainingArguments`` flag. Both are rendered ahead and shipped in the
package (``cli/lock_help.py``); ``python -m hf_encoderlock.cli.lock --write-help`` renders them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..data.domains import DomainError
from ..data.lock_tensors import LockDataError
from ..encoders import EncoderError
from ..experiment import LockExperimentArguments, run_lock_experiment
from ..lock.adversary_heads import AdversaryConfig
from ..lock.config import NONE_WORDS, EncoderLockConfig
from ..lock.knobs import flag_names
from ..lock.objectives import InformationTermsConfig
from ..lock.variants.augmentations import AugmentationConfig
from ..probing.lock_report import lock_report_markdown
from .lock_help import (
    FLAVOURS,
    HELP_ALL_WORD,
    PACKAGE,
    WRITE_COMMAND,
    WRITE_HELP_FLAG,
    help_record,
    help_request,
    help_sources,
    known_help,
    store_help,
    write_help_record,
)

USER_ERRORS = (DomainError, EncoderError, LockDataError)
PASSTHROUGH = True  # cli.main hands every word after `lock` to parse_lock_args
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
USAGE = (
    "encoderlock lock [--config FILE] [--FLAG VALUE ...]   "
    f"(--help: the main job's flags; {HELP_ALL_WORD}: every TrainingArguments flag too)"
)

#: ``--help`` groups, in order: the main job's own flags and the few Trainer flags a lock is run with. A knob group's
#: flags (lock/knobs.py) are listed from its dataclass, so a new knob shows with its group. A field of ours that is in
#: no group still shows, under "Other lock settings"; the other TrainingArguments flags show under one heading with
#: ``--help-all`` only.
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "Encoder and data": (
        "model", "image_processor", "pooling", "authorized", "prohibited", "report_domains", "image_column",
        "label_column",
        "lock_share", "max_lock_images", "domain_seed", "cache_dir", "lock_cache_bytes", "output_dir",
        "overwrite_output_dir", "save_strategy", "resume_from_checkpoint",
    ),
    "Lock: budget, selection and updates": (
        "num_rounds", "weights_per_round", "weight_budget_share", "layers_per_round", "update_steps_per_round",
        "learning_rate", "per_device_train_batch_size", "prohibited_batch_factor", "authorized_projection",
        "unprojected_learning_rate",
        "max_authorized_drift", "repair_steps", "repair_learning_rate", "weight_bound", "magnitude_gate",
        "score_function", "selection_unit", "bound_aware_scores", "score_eps", "score_batches", "candidate_blocks",
        "candidate_module_types", "candidate_name_patterns", "seed", "ddp_global_batch",
    ),
    "Objective and variant": (
        "variant", "objective", "alpha", "objective_eps", *flag_names(InformationTermsConfig), "prohibited_poolings",
        "num_pseudo_classes", "pseudo_label_restarts", "contrastive_temperature", *flag_names(AugmentationConfig),
        "zero_shot_generators", "zero_shot_images", "finetune_aware_steps", "finetune_aware_lr",
        "finetune_aware_weight", "prohibited_transforms", "prohibited_view_batches",
    ),
    "Self-challenge (the lock's own adversary heads)": (
        "challenge_every", *flag_names(AdversaryConfig), "validation_fraction", "challenge_max_images",
        "best_model_criterion",
    ),
    "Measurement (probes before and after, the adaptive attacker)": (
        "probe_fractions", "probe_seeds", "probe_batch_size", "adaptive_attacks",
    ),
    "Publishing": ("push_to_hub", "hub_model_id", "hub_private_repo", "hub_gated", "hub_strategy", "hub_token"),
}  # fmt: skip
TRAINER_HEADING = "Trainer flags (transformers.TrainingArguments)"
# Columns of the rendered help: it is rendered once and shipped, so it cannot follow the terminal it is printed in;
# 80 is what argparse uses when the output is not a terminal.
HELP_COLUMNS = 80


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot be read, or that names fields no argument has."""


def _none_or(convert):
    def parse(text: str):
        return None if text.strip().lower() in NONE_WORDS else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def lock_argument_parser(show_trainer_flags: bool = True) -> HfArgumentParser:
    """The parser of the main job: experiment arguments + the lock config. A number field that may be None (e.g.
    ``authorized_projection``, ``challenge_max_images``) takes ``none`` or ``null`` on the command line. Its help lists
    the flags by group, the TrainingArguments flags last (or, without ``show_trainer_flags``, only their count)."""
    classes = (LockExperimentArguments, EncoderLockConfig)
    # read before HfArgumentParser, which replaces an Optional field's type by its inner type
    may_be_none = {
        name
        for cls in classes
        for name, hint in typing.get_type_hints(cls).items()
        if type(None) in typing.get_args(hint)
    }
    parser = HfArgumentParser(classes, prog="encoderlock lock", usage=USAGE, formatter_class=_HelpFormatter)
    for action in parser._actions:
        if action.dest in may_be_none and action.type in (int, float):
            action.type = _none_or(action.type)
    own = {field.name for cls in classes for field in dataclasses.fields(cls)} - {
        field.name for field in dataclasses.fields(TrainingArguments)
    }
    _group_flags(parser, own, show_trainer_flags)
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """States a default once: a help text that already says what its default means keeps its own words. Renders
    ``HELP_COLUMNS`` wide whatever the terminal."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["width"] = HELP_COLUMNS - 2  # argparse keeps two columns free
        super().__init__(*args, **kwargs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse._StoreFalseAction):  # --no_name: HfArgumentParser copies --name's help
            return f"Turn {action.option_strings[0].replace('--no_', '--', 1)} off."
        if "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _group_flags(parser: argparse.ArgumentParser, own: set[str], show_trainer_flags: bool) -> None:
    """Move every flag into its ``HELP_GROUPS`` group; the remaining Trainer flags go under one heading, listed only
    when ``show_trainer_flags`` (they stay accepted either way)."""
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:  # a boolean field has two flags: --name and --no_name
        if action.option_strings and action.dest != "help":
            by_dest.setdefault(action.dest, []).append(action)
    for title, names in HELP_GROUPS.items():
        _move(parser, [action for name in names for action in by_dest.pop(name, [])], title)
    other = [action for dest, actions in by_dest.items() if dest in own for action in actions]
    _move(parser, other, "Other lock settings")
    trainer = [action for dest, actions in by_dest.items() if dest not in own for action in actions]
    if show_trainer_flags:
        _move(parser, trainer, TRAINER_HEADING)
    else:
        for action in trainer:
            action.help = argparse.SUPPRESS
        group = parser.add_argument_group(TRAINER_HEADING)
        group.description = f"{len(trainer)} more flags, accepted as in transformers: listed by {HELP_ALL_WORD}."
        _move(parser, trainer, TRAINER_HEADING)


def _move(parser: argparse.ArgumentParser, actions: list[argparse.Action], title: str) -> None:
    if not actions:
        return
    group = next((g for g in parser._action_groups if g.title == title), None) or parser.add_argument_group(title)
    for action in actions:
        for old in parser._action_groups:
            if action in old._group_actions:
                old._group_actions.remove(action)
        group._group_actions.append(action)


def render_lock_help(flavour: str = "short") -> str:
    """``encoderlock lock --help`` (``flavour="all"``: ``--help-all``) rendered now, from the parser."""
    return lock_argument_parser(show_trainer_flags=flavour == "all").format_help()


def lock_help_text(flavour: str = "short") -> str:
    """``encoderlock lock --help`` (``flavour="all"``: ``--help-all``): the shipped or cached text while it is still
    true, else rendered and cached."""
    text = known_help(flavour)
    if text is None:
        text = render_lock_help(flavour)
        store_help(flavour, text)
    return text


def lock_help_sources() -> list[str]:
    """The package files the main job's help is rendered from: this module, the modules of the argument classes
    (experiment arguments, lock config and its knob groups), and the package modules they import directly."""
    classes = (*LockExperimentArguments.__mro__, *EncoderLockConfig.__mro__, *EncoderLockConfig.knob_groups)
    modules = {f"{PACKAGE}.cli.lock"} | {cls.__module__ for cls in classes}
    return help_sources(sorted(m for m in modules if m.startswith(f"{PACKAGE}.")))


def write_shipped_help(target: Path | None = None) -> Path:
    """Render both help texts and write them, with what they were rendered from, as the package's shipped help."""
    texts = {flavour: render_lock_help(flavour) for flavour in FLAVOURS}
    return write_help_record(help_record(texts, lock_help_sources()), target)


def _config_values(path: Path, parser: HfArgumentParser) -> dict:
    if not path.is_file():
        raise ConfigFileError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigFileError(f"--config {path}: not valid {path.suffix[1:].upper()} ({error})") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of argument names to values")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigFileError(f"--config {path}: unknown argument(s) {unknown}")
    return values


def parse_lock_args(argv: Sequence[str]) -> tuple[LockExperimentArguments, EncoderLockConfig]:
    """``(experiment arguments, lock config)`` from command-line words: ``--config FILE`` first, flags over it."""
    words = list(argv)
    flavour = help_request(words)
    if flavour is not None:
        print(lock_help_text(flavour), end="")
        raise SystemExit(0)
    config_path = None
    if "--config" in words:
        at = words.index("--config")
        if at + 1 >= len(words):
            raise ConfigFileError("--config needs a file")
        config_path = Path(words[at + 1])
        del words[at : at + 2]
    elif len(words) >= 1 and words[0].endswith(CONFIG_SUFFIXES) and not words[0].startswith("-"):
        config_path, words = Path(words[0]), words[1:]
    parser = lock_argument_parser()
    if config_path is not None:
        parser.set_defaults(**_config_values(config_path, parser))
    experiment, lock_config = parser.parse_args_into_dataclasses(args=words)
    return experiment, lock_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only for the full parser's listing: ``encoderlock lock`` parses its words itself (see ``PASSTHROUGH``)."""
    parser.add_argument("words", nargs=argparse.REMAINDER, help="main-job arguments (see `encoderlock lock --help`)")


def run(args: argparse.Namespace) -> int:
    """Run the main job and print its report."""
    experiment, lock_config = parse_lock_args(args.words)
    report = run_lock_experiment(experiment, lock_config)
    if lock_config.process_index == 0:
        print(lock_report_markdown(report))
        print(f"outputs in {lock_config.output_dir}")
    return 0


if __name__ == "__main__":  # the developer's step after changing a flag: regenerate the shipped help
    if sys.argv[1:] != [WRITE_HELP_FLAG]:
        sys.exit(f"usage: {WRITE_COMMAND}")
    print(f"wrote {write_shipped_help()}")
