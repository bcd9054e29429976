"""``encoderlock lock``: the main job (victim -> probes -> lock -> probes -> report), the same parser as
``examples/lock_vit.py``.

Every field of :class:`~hf_encoderlock.experiment.LockExperimentArguments` and
:class:`~hf_encoderlock.lock.config.EncoderLockConfig` (which includes all of ``transformers.TrainingArguments``) is
a flag, in ``--snake_case`` or ``--kebab-case``. ``--config FILE`` (YAML or JSON) sets values that flags then
override; a lone ``FILE.yaml`` / ``FILE.json`` argument works as ``--config FILE``.
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..data.domains import DomainError
from ..data.lock_tensors import LockDataError
from ..encoders import EncoderError
from ..experiment import LockExperimentArguments, run_lock_experiment
from ..lock.config import NONE_WORDS, EncoderLockConfig
from ..probing.lock_report import lock_report_markdown

USER_ERRORS = (DomainError, EncoderError, LockDataError)
PASSTHROUGH = True  # cli.main hands every word after `lock` to parse_lock_args
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot be read, or that names fields no argument has."""


def _none_or(convert):
    def parse(text: str):
        return None if text.strip().lower() in NONE_WORDS else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def lock_argument_parser() -> HfArgumentParser:
    """The parser of the main job: experiment arguments + the lock config. A number field that may be None (e.g.
    ``authorized_projection``, ``challenge_max_images``) takes ``none`` or ``null`` on the command line."""
    classes = (LockExperimentArguments, EncoderLockConfig)
    # read before HfArgumentParser, which replaces an Optional field's type by its inner type
    may_be_none = {
        name
        for cls in classes
        for name, hint in typing.get_type_hints(cls).items()
        if type(None) in typing.get_args(hint)
    }
    parser = HfArgumentParser(classes, prog="encoderlock lock")
    for action in parser._actions:
        if action.dest in may_be_none and action.type in (int, float):
            action.type = _none_or(action.type)
    return parser


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
