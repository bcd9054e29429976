"""Options the measuring commands (``probe``, ``attack``, ``audit``) share: ``--image-column`` / ``--label-column``,
so a dataset locked with its own column names (``encoderlock lock --image_column pic``) is measured with the same
names, ``--image-processor`` for an encoder saved without one (``probe``, ``attack``), and what ``--quiet`` silences
besides the commands' own progress bars."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from transformers.utils import logging as transformers_logging

from ..data.domains import DomainSpec
from ..encoders import load_encoder
from ..victim import load_victim


def add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """The two column flags (built-in domains have ``image`` / ``label`` and ignore them)."""
    parser.add_argument(
        "--image-column", default="image", metavar="NAME", help="Image column of every domain given (default: image)."
    )
    parser.add_argument(
        "--label-column", default="label", metavar="NAME", help="Label column of every domain given (default: label)."
    )


def add_image_processor_argument(parser: argparse.ArgumentParser) -> None:
    """``--image-processor``: the processor for an encoder folder or Hub id saved without one (a fine-tuned copy of
    a base model, say); the built-in victim has its own."""
    parser.add_argument(
        "--image-processor",
        metavar="PATH_OR_HUB_ID",
        help="Folder or Hub id whose saved image processor prepares the images, for an encoder saved without one "
        "(default: the encoder's own).",
    )


def encoder_or_victim(name: str | None, image_processor: str | None) -> Any:
    """The encoder a measuring command names: the built-in victim for ``victim``, else the folder or Hub id loaded
    with ``image_processor`` when one is given (``None`` stays ``None``)."""
    if name is None:
        return None
    if name == "victim":
        if image_processor is not None:
            raise ValueError("--image-processor is for an encoder of yours; the built-in victim has its own")
        return load_victim()
    return load_encoder(name, image_processor=image_processor) if image_processor is not None else name


def domain_specs(names: Sequence[str] | None, args: argparse.Namespace) -> list[DomainSpec] | None:
    """``names`` as domain specs reading ``args``' columns (``None`` stays ``None``)."""
    if names is None:
        return None
    return [DomainSpec(name, image_column=args.image_column, label_column=args.label_column) for name in names]


def silence_progress(args: argparse.Namespace) -> None:
    """With ``--quiet``, transformers' own progress bars ("Loading weights") go too."""
    if args.quiet:
        transformers_logging.disable_progress_bar()
