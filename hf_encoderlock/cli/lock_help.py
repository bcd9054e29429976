"""The rendered ``encoderlock lock --help`` (and ``--help-all``), printed without importing torch or transformers.

Building the main job's parser costs seconds: the lock's configuration subclasses ``transformers.TrainingArguments``,
whose module imports torch. So :func:`known_help` looks for a text rendered earlier, and only when none is still true
does ``cli/lock.py`` render one:

1. ``lock_help.json`` beside this module, shipped in the package: both texts rendered ahead, with what they were
   rendered from (the Python and transformers versions, and the SHA-256 of the contents of every package file that
   determines them, see :func:`help_sources`). It is printed only when all of these match the running installation,
   so an edited field, default or help group, or another transformers, never shows a stale help.
2. The user's cache (``$HF_ENCODERLOCK_CACHE/cli_help``): a text rendered on this machine, keyed on the package
   sources' stat, the versions and the flavour.

Regenerate the shipped file after editing one of its recorded sources, or after a transformers upgrade (the test
``tests/cli/test_lock_help.py`` fails, naming this command, while it is stale)::

    python -m hf_encoderlock.cli.lock --write-help

This module imports only the standard library and ``_paths``: ``cli.main`` reads the help before importing the ``lock``
command.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from .._paths import default_cache_dir

HELP_WORDS = ("-h", "--help")
HELP_ALL_WORD = "--help-all"  # also every transformers.TrainingArguments flag
FLAVOURS = ("short", "all")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_ROOT.name
SHIPPED_HELP = Path(__file__).with_name("lock_help.json")
WRITE_HELP_FLAG = "--write-help"
WRITE_COMMAND = f"python -m {PACKAGE}.cli.lock {WRITE_HELP_FLAG}"
RECORD_FORMAT = 1


def help_request(words: list[str]) -> str | None:
    """``"all"``, ``"short"`` or ``None``: whether ``words`` ask for the main job's help, and which."""
    if HELP_ALL_WORD in words:
        return "all"
    return "short" if any(word in HELP_WORDS for word in words) else None


def known_help(flavour: str) -> str | None:
    """The help shipped with the package or rendered earlier on this machine, when still true; else ``None``."""
    text = shipped_help(flavour)
    return text if text is not None else cached_help(flavour)


# ------------------------------------------------------------------------------------------ the shipped record
def rendering_environment() -> dict[str, str]:
    """What a rendered help depends on besides the package's sources: argparse's Python and the transformers that
    supplies ``TrainingArguments`` and ``HfArgumentParser``."""
    try:
        transformers_version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers_version = "none"
    return {"python": "{}.{}".format(*sys.version_info[:2]), "transformers": transformers_version}


def source_hashes(files: Iterable[str]) -> dict[str, str | None]:
    """SHA-256 of the contents of each package file (a path relative to the package, ``/``-separated; ``None`` when
    missing). Line ends are read as ``\\n``, so a checkout with Windows line ends hashes alike."""
    hashes: dict[str, str | None] = {}
    for name in files:
        try:
            contents = (PACKAGE_ROOT / name).read_bytes().replace(b"\r\n", b"\n")
        except OSError:
            hashes[name] = None
            continue
        hashes[name] = hashlib.sha256(contents).hexdigest()
    return hashes


def help_sources(modules: Iterable[str]) -> list[str]:
    """The package files that determine a help built from ``modules`` (dotted names): their own files and those of
    the package modules they import directly (read from the source: a default or a choice list is often a constant
    imported from another module). Returned relative to the package, sorted."""
    files: set[Path] = set()
    for module in modules:
        path = _module_file(module)
        files.add(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            files.update(_module_file(name) for name in _imported_modules(node, package))
    return sorted(path.relative_to(PACKAGE_ROOT).as_posix() for path in files)


def _imported_modules(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        # ``from pkg import name`` loads the module pkg.name when there is one, else pkg
        names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
    else:
        return []
    return [name for name in names if (name == PACKAGE or name.startswith(PACKAGE + ".")) and _is_module(name)]


def _module_path(module: str) -> Path:
    return PACKAGE_ROOT.parent.joinpath(*module.split("."))


def _is_module(module: str) -> bool:
    path = _module_path(module)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_file(module: str) -> Path:
    path = _module_path(module)
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"


def help_record(texts: dict[str, str], sources: list[str]) -> dict:
    """The shipped file's contents: each flavour's text (as lines, so a change reads as a diff) and what it was
    rendered from."""
    return {
        "format": RECORD_FORMAT,
        "regenerate_with": WRITE_COMMAND,
        "environment": rendering_environment(),
        "sources": source_hashes(sources),
        "help": {flavour: text.splitlines(keepends=True) for flavour, text in texts.items()},
    }


def write_help_record(record: dict, target: Path | None = None) -> Path:
    """Write ``record`` as the shipped help (``SHIPPED_HELP`` unless ``target``); returns the path written."""
    target = SHIPPED_HELP if target is None else target
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(target)
    return target


def read_help_record(source: Path | None = None) -> dict | None:
    """The shipped record (``SHIPPED_HELP`` unless ``source``), or ``None`` when it is missing or unreadable."""
    try:
        record = json.loads((SHIPPED_HELP if source is None else source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def shipped_help(flavour: str, source: Path | None = None) -> str | None:
    """The shipped help text, or ``None`` when it was rendered from other sources or versions than these."""
    record = read_help_record(source)
    if record is None or record.get("environment") != rendering_environment():
        return None
    recorded = record.get("sources")
    if not isinstance(recorded, dict) or source_hashes(recorded) != recorded:
        return None
    lines = record.get("help", {}).get(flavour)
    return None if lines is None else "".join(lines)


# ------------------------------------------------------------------------------------------------ the user's cache
def _cache_file(flavour: str) -> Path:
    digest = hashlib.sha256()
    environment = rendering_environment()
    digest.update(f"{flavour} {environment['transformers']} {environment['python']}".encode())
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):  # stat, not read: a changed file changes its size or time
        stat = path.stat()
        digest.update(f"{path.relative_to(PACKAGE_ROOT)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return default_cache_dir() / "cli_help" / f"lock-{flavour}-{digest.hexdigest()[:20]}.txt"


def cached_help(flavour: str) -> str | None:
    """The help text rendered earlier on this machine for the same sources and versions, or ``None``."""
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
