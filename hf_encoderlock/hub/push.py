"""Publish locked encoders to the Hugging Face Hub and load them back with their authorization verified.

- :func:`push_locked_to_hub` regenerates the model card of a locked folder (``README.md``, with the ``encoderlock:``
  block and optional gating), signs the folder when given a key (``model.sig``), creates the repository, gates it
  when asked and uploads the encoder, its image processor, ``encoderlock_config.json``, the card and the signature
  in one commit.
- :func:`load_locked` downloads (or opens) a locked encoder, checks the SHA-256 of every published file and the
  authorization block against the card and ``encoderlock_config.json`` (and, with ``public_key``, the owner's
  signature over every file) and returns the encoder adapter, its image processor and the parsed
  :class:`Authorization`; :class:`hf_encoderlock.hub.LockedEncoder` wraps the same loading path
  (:func:`open_locked`) in one object. ``revision=<commit sha>`` pins a pull to the commit that was reviewed.

Any Hub-compatible server works: the ``huggingface_hub`` client honours ``HF_ENDPOINT``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from huggingface_hub import HfApi, snapshot_download
from PIL import Image
from torch import nn

from .._files import CARD_FILE, LOCK_CONFIG_FILE, MASK_FILE, MODEL_CONFIG_FILE, SIGNATURE_FILE, TRAINER_STATE_FILE
from ..encoders import EncoderAdapter
from .authorization import Authorization, LockVerificationError
from .card import find_report, write_model_card
from .manifest import (
    PUBLISH_IGNORE_PATTERNS,
    published_files,
    published_patterns,
    refuse_links,
    unpublished_files,
    weight_files,
)
from .public_names import names_a_repo
from .signing import KeyLike, require_signing, sign_locked, signature_mismatches, verify_signature

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload locked encoder (hf_encoderlock)"
GATING_MODES = ("auto", "manual")
PUSH_IGNORE_PATTERNS = PUBLISH_IGNORE_PATTERNS  # top-level files only; no mask, lock state or Trainer state

__all__ = [
    "Authorization",
    "LockVerificationError",
    "OpenedLock",
    "load_locked",
    "open_locked",
    "push_locked_to_hub",
]


class OpenedLock(NamedTuple):
    """A verified locked encoder: its local folder (a Hub snapshot or the given folder), adapter and authorization."""

    folder: Path
    encoder: EncoderAdapter
    authorization: Authorization


def _gating_mode(gated: bool | str) -> str | None:
    if gated is False or gated is None:
        return None
    if gated is True:
        return "auto"
    if gated not in GATING_MODES:
        raise ValueError(f"gated must be True, False or one of {GATING_MODES}, got {gated!r}")
    return str(gated)


def _check_locked_folder(folder: Path) -> None:
    missing = [name for name in (MODEL_CONFIG_FILE, LOCK_CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a locked encoder folder: {', '.join(missing)} missing")
    if not weight_files(folder):
        raise FileNotFoundError(f"{folder} holds no weight file")
    if (folder / TRAINER_STATE_FILE).is_file():  # found on the user's path: it was pushed as if it were a lock
        raise ValueError(
            f"{folder} is a checkpoint of a lock in progress ({TRAINER_STATE_FILE}): a half-done lock still holds "
            "original weights where the finished lock changes them; push the finished lock (the folder save_model "
            "writes, or the main job's locked/)"
        )


def push_locked_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    gated: bool | str = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    revision: str | None = None,
    report: dict[str, Any] | None = None,
    include_mask: bool = False,
    license: str | None = None,
    sign_key: str | os.PathLike | None = None,
    sign_password: str | bytes | None = None,
    base_model: str | None = None,
) -> Any:
    """Push a locked encoder folder to ``repo_id``; returns the ``CommitInfo``.

    Only the allow-listed files are uploaded (:data:`hf_encoderlock._files.PUBLISHED_FILES`: the encoder's config
    and weights, its image processor, ``encoderlock_config.json``, the card and the signature); anything else in the
    folder stays local, and a folder whose published files are symbolic links is refused. ``base_model`` (a Hub id)
    is named in the card only when given here or already named by the folder's card.

    The card is rendered again first (with this ``repo_id``, the gating choice and ``license``, a Hub license id)
    so that it always matches the files being uploaded. ``gated`` is ``True`` (= ``"auto"``), ``"auto"``,
    ``"manual"`` or ``False``; the gate is set before any file is uploaded. The lock's mask (which weights changed)
    stays local unless ``include_mask``. With ``sign_key`` (an elliptic-curve private key, PEM) every uploaded file,
    the new card included, is signed into ``model.sig`` (see :func:`hf_encoderlock.hub.signing.sign_locked`).

    A folder that is already signed is refused without ``sign_key``: rendering the card changes a signed file.
    """
    folder = Path(folder)
    _check_locked_folder(folder)
    names = published_files(folder, include_mask=include_mask)
    refuse_links(folder, names)
    mode = _gating_mode(gated)
    if sign_key is None and (folder / SIGNATURE_FILE).exists():
        raise ValueError(
            f"{folder} is signed ({SIGNATURE_FILE}) and pushing renders its model card again, which the signature "
            f"covers: pass sign_key (--sign-key) to sign it again, or delete {SIGNATURE_FILE} to push it unsigned"
        )
    if sign_key is not None:  # before the card is rewritten or anything is uploaded
        require_signing()
        if not Path(sign_key).expanduser().is_file():
            raise FileNotFoundError(f"no private key at {sign_key}")
    if report is None:  # looked up next to the folder now: the card is rendered in a copy elsewhere
        report = find_report(folder, json.loads((folder / LOCK_CONFIG_FILE).read_text(encoding="utf-8")))
    # The card is rendered (and the files signed) in a temporary copy of what is published, so the owner's folder
    # stays byte-identical whether the push succeeds or fails.
    with tempfile.TemporaryDirectory(prefix="encoderlock-push-") as scratch:
        staged = Path(scratch) / folder.resolve().name
        staged.mkdir()
        for name in names:
            shutil.copy2(folder / name, staged / name, follow_symlinks=False)
        left_out = unpublished_files(folder, include_mask=include_mask)
        if left_out:
            logger.info("push: not uploading %s (not one of the lock's files)", ", ".join(left_out))
        overrides = {"base_model": base_model} if base_model is not None else {}
        write_model_card(
            staged,
            report=report,
            repo_id=repo_id,
            gated=mode is not None,
            license=license,
            include_mask=include_mask,
            **overrides,
        )
        if sign_key is not None:
            sign_locked(staged, sign_key, password=sign_password, include_mask=include_mask)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if mode is not None:
            api.update_repo_settings(repo_id, gated=mode, repo_type="model")
        ignore = [p for p in PUSH_IGNORE_PATTERNS if not (include_mask and p == MASK_FILE)]
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staged,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            allow_patterns=published_patterns(include_mask),
            ignore_patterns=ignore,
        )


def open_locked(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    token: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    pooling: str = "auto",
    model: nn.Module | None = None,
    public_key: KeyLike | None = None,
    preprocess_fn: Callable[[Sequence[Image.Image]], torch.Tensor] | None = None,
) -> OpenedLock:
    """Download (or open) a locked encoder and load it only once its files match its card (and its signature).

    The one loading path behind :func:`load_locked` and ``LockedEncoder.from_pretrained``. Raises
    :class:`LockVerificationError` when the card, its ``encoderlock:`` block, a declared hash or the lock config
    does not match, or, with ``public_key`` (the owner's PEM public key: a path or the PEM text), when ``model.sig``
    is missing, was made with another key or any file was added, removed or changed since signing. ``model`` is
    needed for a folder saved from a plain torch module (see ``EncoderAdapter.from_pretrained``), and
    ``preprocess_fn`` (PIL images -> pixel tensor) for one that holds no image processor.

    A local folder is opened only without ``revision``: with it, a name such as ``user/name`` is always the Hub
    repository (a folder of the same name here does not shadow the pin), and a path is refused.
    """
    local = Path(repo_id_or_path)
    if local.is_dir() and revision is not None and not names_a_repo(repo_id_or_path):
        raise ValueError(
            f"revision={revision!r} pins a commit of a Hub repository, but {local} is a local folder; drop revision "
            "to open the folder, or pass the repository id"
        )
    if local.is_dir() and revision is None:  # a pinned revision always means the Hub repository, never a folder
        folder = local
    else:
        folder = Path(
            snapshot_download(
                str(repo_id_or_path), revision=revision, token=token, cache_dir=cache_dir, repo_type="model"
            )
        )
    if public_key is not None:  # first: the signature covers the card that the next check trusts
        verify_signature(folder, public_key)
    else:
        mismatches = signature_mismatches(folder)
        if mismatches:  # the owner signed other files: without the key this cannot be refused, but must be said
            warnings.warn(
                f"{repo_id_or_path}: {SIGNATURE_FILE} no longer matches the files, which were edited after signing "
                f"({'; '.join(mismatches)}); pass public_key= (the owner's) to refuse such a lock",
                UserWarning,
                stacklevel=3,
            )
    authorization = Authorization.from_card(folder / CARD_FILE)
    authorization.verify(folder)
    adapter = EncoderAdapter.from_pretrained(folder, pooling=pooling, model=model, preprocess_fn=preprocess_fn)
    adapter.name = str(repo_id_or_path)
    return OpenedLock(folder, adapter, authorization)


def load_locked(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    token: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    pooling: str = "auto",
    model: nn.Module | None = None,
    public_key: KeyLike | None = None,
    preprocess_fn: Callable[[Sequence[Image.Image]], torch.Tensor] | None = None,
) -> tuple[EncoderAdapter, Any, Authorization]:
    """``(encoder adapter, image processor, Authorization)`` of a locked encoder on the Hub or in a folder.

    The weights are loaded only after every published file's SHA-256 matches the card's ``encoderlock:`` block and
    the block agrees with ``encoderlock_config.json``; with ``public_key``, only after the owner's signature checks
    (see :func:`open_locked`). :class:`LockVerificationError` otherwise (also when the card or the block is
    missing). Pass ``revision=<commit sha>`` to load exactly the commit that was reviewed. A lock of a plain torch
    module takes ``model=`` (an instance of its class) and ``preprocess_fn=`` (see :func:`open_locked`).
    """
    opened = open_locked(
        repo_id_or_path,
        revision,
        token,
        cache_dir=cache_dir,
        pooling=pooling,
        model=model,
        public_key=public_key,
        preprocess_fn=preprocess_fn,
    )
    return opened.encoder, opened.encoder.image_processor, opened.authorization
