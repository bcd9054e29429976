"""What a locked folder publishes and how its files are hashed: the allow-list a push uploads, the files a
verification must account for, and their SHA-256.

One place decides which files leave the owner's machine (:data:`hf_encoderlock._files.PUBLISHED_FILES`, the mask only
when asked) and which files a card hashes; the card (:mod:`.card`), the verification (:mod:`.authorization`), the
signature (:mod:`.signing`) and the push (:mod:`.push`) all read that decision from here.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

from .._files import CARD_FILE, MASK_FILE, PRIVATE_FILES, PUBLISHED_FILES, SIGNATURE_FILE

HASH_ALGORITHM = "sha256"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
# the lock's mask and Trainer state are not part of the released model (file-name patterns)
NON_MODEL_WEIGHT_FILES = PRIVATE_FILES
# What a push never uploads: subfolders (checkpoints), hidden files and the private files (globs, upload_folder's).
# Only PUBLISHED_FILES are uploaded at all; these patterns are a second guard.
PUBLISH_IGNORE_PATTERNS = ("*/*", ".*", *PRIVATE_FILES)
# Names a loader could read besides the published ones (another weight format, a config, custom code): such a file
# in a locked folder that the card does not declare fails verification. Other files (a user's notes) are ignored.
LOADABLE_SUFFIXES = (".json", ".py")
# Published, but not hashed in the card: the card cannot hash itself, and the signature is written after it.
UNHASHED_FILES = (CARD_FILE, SIGNATURE_FILE)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: str | Path) -> list[str]:
    """Names of the model weight files at the top of ``folder`` (the lock's mask excluded)."""
    root = Path(folder)
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_file()
        and p.name.endswith(WEIGHT_SUFFIXES)
        and not any(fnmatch.fnmatch(p.name, pattern) for pattern in NON_MODEL_WEIGHT_FILES)
    )


def weight_hashes(folder: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` for every model weight file in ``folder``."""
    return {name: sha256_file(Path(folder) / name) for name in weight_files(folder)}


def is_private_file(name: str) -> bool:
    """Whether ``name`` is one of the files that stay with the owner (mask, lock state, Trainer state)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in PRIVATE_FILES)


def published_patterns(include_mask: bool = False) -> list[str]:
    """The allow-list a push uploads from (globs of top-level names): ``PUBLISHED_FILES``, and the mask when asked."""
    return [*PUBLISHED_FILES, *([MASK_FILE] if include_mask else [])]


def published_files(folder: str | Path, include_mask: bool = False) -> list[str]:
    """Names of the top-level files of ``folder`` that a push uploads: only the allow-listed names
    (:data:`hf_encoderlock._files.PUBLISHED_FILES`; the mask only with ``include_mask``), never a user's file."""
    allowed = published_patterns(include_mask)
    return sorted(
        p.name
        for p in Path(folder).iterdir()
        if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in allowed)
    )


def unpublished_files(folder: str | Path, include_mask: bool = False) -> list[str]:
    """Names of the top-level entries of ``folder`` that a push leaves out (a user's files, subfolders, private and
    hidden files)."""
    published = set(published_files(folder, include_mask=include_mask))
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in published)


def accountable_files(folder: str | Path) -> list[str]:
    """The top-level files a verification must account for: the published ones, and any other a loader could read
    (weights, ``.json``, ``.py``); hidden and private files, and a user's other files (notes), are not."""
    root = Path(folder)
    loadable = [p.name for p in root.iterdir() if p.is_file() and p.name.endswith(LOADABLE_SUFFIXES)]
    names = {*published_files(root), *weight_files(root), *loadable}
    return sorted(n for n in names if not n.startswith(".") and not is_private_file(n))


def refuse_links(folder: str | Path, names: list[str]) -> None:
    """Raise ``ValueError`` when one of ``names`` in ``folder`` is a symbolic link: a push would upload the bytes
    of whatever it points to, possibly a file outside the folder."""
    links = [name for name in names if (Path(folder) / name).is_symlink()]
    if links:
        raise ValueError(
            f"{folder} holds symbolic links ({', '.join(links)}); a push uploads only regular files written into the "
            "folder: replace the links by the files themselves (a Hub download: LockedEncoder.push_to_hub copies it)"
        )


def file_hashes(folder: str | Path, include_mask: bool = False) -> dict[str, str]:
    """``{file name: sha256}`` of the published files that are neither weights nor the card or its signature:
    ``config.json``, ``preprocessor_config.json``, ``encoderlock_config.json`` and anything else a push uploads."""
    skip = set(weight_files(folder)) | set(UNHASHED_FILES)
    names = [n for n in published_files(folder, include_mask=include_mask) if n not in skip]
    return {name: sha256_file(Path(folder) / name) for name in names}
