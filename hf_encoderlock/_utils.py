"""Small jobs several layers share: atomic folder publishing, package versions, number formatting."""

from __future__ import annotations

import fnmatch
import importlib
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from ._files import PACKAGE_OUTPUTS, RETIRED_INFIX, SAVED_FOLDER_MODE, STAGING_INFIX

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


def foreign_entries(folder: str | Path) -> list[str]:
    """Names in ``folder`` that this package does not write (a user's files); empty when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in PACKAGE_OUTPUTS)
    )


def check_output_folder(folder: str | Path, finished_marker: str, overwrite: bool, what: str) -> None:
    """Refuse, before any work, an output folder that cannot be written, that holds a user's files, or that holds a
    finished result (``finished_marker``) which ``overwrite`` does not allow replacing. A user's files are never
    deleted: with ``overwrite`` they are kept beside the new result."""
    folder = Path(folder).resolve()
    if folder == Path.cwd().resolve() or folder in Path.cwd().resolve().parents:
        raise ValueError(f"{what}: output_dir {folder} is the current folder or contains it; pass a sub-folder")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise PermissionError(f"{what}: output_dir {folder} cannot be written")
    if overwrite:
        return
    users = foreign_entries(folder)
    if users:
        shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
        raise FileExistsError(
            f"{what}: output_dir {folder} holds files this package did not write ({shown}); choose another folder, "
            "or pass overwrite_output_dir=True (they are kept, never deleted)"
        )
    if (folder / finished_marker).exists():
        raise FileExistsError(
            f"{what}: output_dir {folder} already holds a finished result ({finished_marker}); choose another "
            "folder, or pass overwrite_output_dir=True to replace it"
        )


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
