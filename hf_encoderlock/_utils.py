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

from filelock import FileLock, Timeout

from ._files import (
    CARD_FILE,
    CARD_FORMAT,
    CHECKPOINTS_SUBDIR,
    LOCK_CONFIG_FILE,
    LOCK_SUFFIX,
    LOCKED_SUBDIR,
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    MODEL_WEIGHTS_INDEX_FILE,
    MODEL_WEIGHTS_SHARDS,
    PACKAGE_OUTPUTS,
    PLAIN_MODULE_CONFIG_FILE,
    PROCESSOR_CONFIG_FILE,
    RETIRED_INFIX,
    SAVED_FOLDER_MODE,
    STAGING_INFIX,
    VICTIM_SUBDIR,
)

VERSIONED_PACKAGES = ("hf_encoderlock", "torch", "transformers", "datasets", "accelerate")
# Generic names a user's own model folder also holds: ours only beside the lock's own config (every package save
# writes them together), or in the main job's victim copy.
SHARED_MODEL_NAMES = (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    MODEL_WEIGHTS_INDEX_FILE,
    MODEL_WEIGHTS_SHARDS,
    PROCESSOR_CONFIG_FILE,
)
OWN_FOLDER_MARKERS = (LOCK_CONFIG_FILE, PLAIN_MODULE_CONFIG_FILE)
# Sub-folders of an output folder that only this package writes into: looked into for a user's files too.
PACKAGE_SUBDIRS = (VICTIM_SUBDIR, LOCKED_SUBDIR, CHECKPOINTS_SUBDIR)
CARD_MARKER = CARD_FORMAT.rsplit("/", 1)[0]  # every card this package renders names its format


# ----------------------------------------------------------------------------------------------- atomic folders
def staging_folder(target: str | Path) -> Path:
    """A new empty hidden sibling of ``target`` (``.{name}.partial-XXXX``) to write a save into."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_INFIX}", dir=target.parent))
    staging.chmod(SAVED_FOLDER_MODE)
    return staging


def _merge_kept_entries(source: Path, staging: Path) -> None:
    """Move every entry of ``source`` that ``staging`` does not have into it, looking into the sub-folders both
    have, so that replacing ``source`` by ``staging`` deletes only files the new save rewrote."""
    for entry in source.iterdir():
        counterpart = staging / entry.name
        if not counterpart.exists() and not counterpart.is_symlink():
            entry.rename(counterpart)
        elif entry.is_dir() and not entry.is_symlink() and counterpart.is_dir() and not counterpart.is_symlink():
            _merge_kept_entries(entry, counterpart)


def publish_folder(staging: str | Path, target: str | Path) -> None:
    """Put the fully written ``staging`` folder at ``target`` by renames (same file system).

    An existing ``target`` is replaced; its entries that the new save did not write (checkpoints, logs, a user's
    files, also inside sub-folders such as ``victim/``) are moved over first, so publishing never deletes a file this
    package did not just rewrite. ``target`` is missing only between two renames, and never holds a partly written
    save.
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        _merge_kept_entries(target, staging)
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}{RETIRED_INFIX}", dir=target.parent))
        target.rename(retired)  # replaces the empty placeholder
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)


def _reads_as_card(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return CARD_MARKER in handle.read(1 << 16)
    except OSError:
        return False


def is_package_output(path: str | Path) -> bool:
    """Whether ``path`` is something this package writes and may replace: a name of ``PACKAGE_OUTPUTS``, and for the
    names a user's own folder also holds, written by us (a ``README.md`` that is one of our cards; a ``config.json``
    or weights beside the lock's own config, or in the main job's ``victim/`` copy)."""
    path = Path(path)
    name = path.name
    if path.is_symlink() or not any(fnmatch.fnmatch(name, pattern) for pattern in PACKAGE_OUTPUTS):
        return False
    if name == CARD_FILE:
        return path.is_file() and _reads_as_card(path)
    if any(fnmatch.fnmatch(name, pattern) for pattern in SHARED_MODEL_NAMES):
        folder = path.parent
        return folder.name == VICTIM_SUBDIR or any((folder / marker).is_file() for marker in OWN_FOLDER_MARKERS)
    return True


def foreign_entries(folder: str | Path) -> list[str]:
    """Entries of ``folder`` that this package did not write (a user's files), also inside its ``victim/``,
    ``locked/`` and ``checkpoints/`` sub-folders (named ``victim/notes.txt``); empty when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if not is_package_output(entry):
            found.append(entry.name)
        elif entry.name in PACKAGE_SUBDIRS and entry.is_dir():
            found += [f"{entry.name}/{name}" for name in foreign_entries(entry)]
    return found


def _loaded_from(sources: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The existing local folders among ``sources`` (a Hub id or a missing path is not one)."""
    folders = []
    for source in sources:
        if source is None or not str(source):
            continue
        path = Path(source).expanduser()
        if path.is_file():
            path = path.parent
        if path.is_dir():
            folders.append(path.resolve())
    return folders


def check_output_folder(
    folder: str | Path,
    finished_marker: str,
    overwrite: bool,
    what: str,
    sources: Iterable[str | os.PathLike | None] = (),
) -> None:
    """Refuse, before any work, an output folder that cannot be written, that is (or contains) a folder the encoder
    was loaded from (``sources``; refused even with ``overwrite``), that holds a user's files (a ``README.md`` or
    ``config.json`` this package did not write included), or that holds a finished result (``finished_marker``)
    which ``overwrite`` does not allow replacing. A user's files are never deleted: with ``overwrite`` they are
    kept beside the new result (a user's ``README.md`` or ``config.json`` is replaced)."""
    folder = Path(folder).resolve()
    if folder == Path.cwd().resolve() or folder in Path.cwd().resolve().parents:
        raise ValueError(f"{what}: output_dir {folder} is the current folder or contains it; pass a sub-folder")
    for source in _loaded_from(sources):
        if source == folder or folder in source.parents:
            raise ValueError(
                f"{what}: output_dir {folder} is, or contains, {source}, the folder the encoder was loaded from; "
                "writing there would replace the original weights: choose another output_dir"
            )
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
            "or pass overwrite_output_dir=True (--overwrite_output_dir on the command line; they are kept, never "
            "deleted)"
        )
    if (folder / finished_marker).exists():
        raise FileExistsError(
            f"{what}: output_dir {folder} already holds a finished result ({finished_marker}); choose another "
            "folder, or pass overwrite_output_dir=True (--overwrite_output_dir on the command line) to replace it"
        )


def refuse_replacing_user_files(folder: str | Path, names: Iterable[str], what: str) -> None:
    """Raise ``FileExistsError`` when writing ``names`` into ``folder`` would replace a file this package did not
    write (a user's ``README.md`` or ``config.json``)."""
    folder = Path(folder)
    theirs = [name for name in names if (folder / name).exists() and not is_package_output(folder / name)]
    if theirs:
        raise FileExistsError(
            f"{what}: {folder} holds {', '.join(theirs)}, which this package did not write and would replace; "
            "choose another folder or move them first"
        )


def remove_package_outputs(folder: str | Path) -> list[str]:
    """Delete what this package wrote in ``folder`` (its checkpoints, logs, staging leftovers) and the folder
    itself once empty; a user's files, and the folder holding them, stay. Returns the names kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for entry in folder.iterdir():
        if is_package_output(entry) or (STAGING_INFIX in entry.name or RETIRED_INFIX in entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    kept = sorted(entry.name for entry in folder.iterdir())
    if not kept:
        folder.rmdir()
    return kept


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
def exclusive_output_folder(target: str | Path, what: str) -> Iterator[None]:
    """Hold ``target`` for one run: a second run on the same output folder is refused at once, before any work.

    Without this, a second run would take the first one's staging folder for an interrupted run's leftover and delete
    it, and the first run would publish an output that looks complete with parts missing. The hold is an OS file lock
    (filelock) on the hidden sibling ``.{name}.lock``, which is removed when the block ends; a killed run's lock goes
    with its process, and its file is taken over by the next run.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    hold = FileLock(target.parent / f".{target.name}{LOCK_SUFFIX}")
    cannot = f"{what}: output_dir {target} cannot be written (its hold file {hold.lock_file} cannot be created)"
    try:
        hold.acquire(timeout=0)
    except Timeout:  # an OSError too: caught first
        if not Path(hold.lock_file).exists():  # nobody holds it: the file could not be made (e.g. under /proc)
            raise PermissionError(cannot) from None
        raise FileExistsError(
            f"{what}: another run is writing output_dir {target} (it holds {hold.lock_file}); wait for it to finish "
            "or choose another output_dir"
        ) from None
    except OSError as error:  # e.g. a read-only or virtual file system (found on the user's path: /sys)
        raise PermissionError(f"{cannot}: {error.strerror or error}") from None
    try:
        yield
    finally:
        # the file goes while still held, so no empty lock file is left beside the user's folder: a run that opens
        # it before then is refused (this run is not over yet) and a later one creates a fresh file. Only a run
        # whose open and lock straddle both this unlink and the release could hold the old file beside a newer run.
        Path(hold.lock_file).unlink(missing_ok=True)
        hold.release()


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
