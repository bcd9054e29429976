"""Options the measuring commands (``probe``, ``attack``, ``audit``) share: ``--image-column`` / ``--label-column``,
so a dataset locked with its own column names (``encoderlock lock --image_column pic``) is measured with the same
names, and what ``--quiet`` silences besides the commands' own progress bars."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from transformers.utils import logging as transformers_logging

from ..data.domains import DomainSpec


def add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """The two column flags (built-in domains have ``image`` / ``label`` and ignore them)."""
    parser.add_argument(
        "--image-column", default="image", metavar="NAME", help="Image column of every domain given (default: image)."
    )
    parser.add_argument(
        "--label-column", default="label", metavar="NAME", help="Label column of every domain given (default: label)."
    )


def domain_specs(names: Sequence[str] | None, args: argparse.Namespace) -> list[DomainSpec] | None:
    """``names`` as domain specs reading ``args``' columns (``None`` stays ``None``)."""
    if names is None:
        return None
    return [DomainSpec(name, image_column=args.image_column, label_column=args.label_column) for name in names]


def silence_progress(args: argparse.Namespace) -> None:
    """With ``--quiet``, transformers' own progress bars ("Loading weights") go too."""
    if args.quiet:
        transformers_logging.disable_progress_bar()
