"""Small jobs several layers share: atomic folder publishing, package versions, number formatting."""

from __future__ import annotations

import importlib
import math
import platform
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from ._files import RETIRED_INFIX, SAVED_FOLDER_MODE, STAGING_INFIX

VERSIONED_PACKAGES = ("hf_encoderlock", "torch", "transformers", "datasets", "accelerate")


# ----------------------------------------------------------------------------------------------- atomic folders
def staging_folder(target: str | Path) -> Path:
    """A new empty hidden sibling of ``target`` (``.{name}.partial-XXXX``) to write a save into."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_INFIX}", dir=target.parent))
    staging.chmod(SAVED_FOLDER_MODE)
    return staging


def publish_folder(staging: str | Path, target: str | Path) -> None:
    """Put the fully written ``staging`` folder at ``target`` by renames (same file system).

    An existing ``target`` is replaced; its entries that the new save did not write (checkpoints, logs, a user's
    files) are moved over first, so publishing never deletes a file this package did not just rewrite. ``target``
    is missing only between two renames, and never holds a partly written save.
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        for entry in target.iterdir():
            if not (staging / entry.name).exists():
                entry.rename(staging / entry.name)
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}{RETIRED_INFIX}", dir=target.parent))
        target.rename(retired)  # replaces the empty placeholder
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)


def remove_stale_staging(target: str | Path) -> list[Path]:
    """Delete the hidden staging / retired siblings of ``target`` that a killed run left (only names this package
    makes: ``.{name}.partial-*`` and ``.{name}.old-*``); returns what was removed."""
    target = Path(target).resolve()
    if not target.parent.is_dir():
        return []
    stale = [
        path
        for infix in (STAGING_INFIX, RETIRED_INFIX)
        for path in target.parent.glob(f".{target.name}{infix}*")
        if path.is_dir()
    ]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Write a folder atomically: yields a staging folder, published at ``target`` when the block succeeds.

    On any exception (Ctrl-C included) the staging folder is removed and ``target`` is left as it was.
    """
    target = Path(target).resolve()
    staging = staging_folder(target)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_folder(staging, target)


# ----------------------------------------------------------------------------------------------------- versions
def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on, and Python's (recorded in every result)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


# --------------------------------------------------------------------------------------------------- formatting
def finite(value: Any) -> Any:
    """``value`` with every NaN / inf float replaced by ``None`` (recursively), so JSON and YAML stay strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def as_finite_float(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def percent(value: Any, digits: int = 1, suffix: str = "%", missing: str = "n/a") -> str:
    """A fraction as a percentage string (``0.283 -> "28.3%"``); ``missing`` for None / NaN / non-numbers."""
    number = as_finite_float(value)
    return missing if number is None else f"{100 * number:.{digits}f}{suffix}"


def markdown_row(cells: Iterable[str]) -> str:
    """One row of a Markdown table."""
    return "| " + " | ".join(cells) + " |"


# ------------------------------------------------------------------------------------------- optional packages
def optional_import(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` of an optional extra, or say in one line which extra to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ImportError(
            f"{purpose} needs the {module.split('.')[0]!r} package: pip install 'hf_encoderlock[{extra}]'"
        ) from error
