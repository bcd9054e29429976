"""The rendered ``encoderlock lock --help``, kept in the package cache so that asking for help again does not pay for
importing torch and transformers (the lock's configuration subclasses ``transformers.TrainingArguments``, whose
module imports torch, so building the parser costs seconds).

This module imports only the standard library and ``_utils``: ``cli.main`` reads the cache before importing the
``lock`` command. The cache key covers the package's source files, the transformers version and the help flavour,
so an edited field, an upgrade or another transformers version renders the help afresh.
"""

from __future__ import annotations

import hashlib
import sys
from importlib import metadata
from pathlib import Path

from .._utils import default_cache_dir

HELP_WORDS = ("-h", "--help")
HELP_ALL_WORD = "--help-all"  # also every transformers.TrainingArguments flag
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def help_request(words: list[str]) -> str | None:
    """``"all"``, ``"short"`` or ``None``: whether ``words`` ask for the main job's help, and which."""
    if HELP_ALL_WORD in words:
        return "all"
    return "short" if any(word in HELP_WORDS for word in words) else None


def _cache_file(flavour: str) -> Path:
    digest = hashlib.sha256()
    try:
        transformers_version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers_version = "none"
    digest.update(f"{flavour} {transformers_version} {sys.version_info[:2]}".encode())
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):  # stat, not read: a changed file changes its size or time
        stat = path.stat()
        digest.update(f"{path.relative_to(PACKAGE_ROOT)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return default_cache_dir() / "cli_help" / f"lock-{flavour}-{digest.hexdigest()[:20]}.txt"


def cached_help(flavour: str) -> str | None:
    """The help text rendered earlier for the same sources and versions, or ``None``."""
    try:
        return _cache_file(flavour).read_text(encoding="utf-8")
    except OSError:
        return None


def store_help(flavour: str, text: str) -> None:
    """Keep ``text`` for the next request; a cache that cannot be written only costs time."""
    target = _cache_file(flavour)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)  # a reader never sees half a help text
    except OSError:
        pass
