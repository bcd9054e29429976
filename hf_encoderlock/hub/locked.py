"""A locked encoder as one object, the way PEFT wraps an adapter: verified loading, features, save and push.

``LockedEncoder.from_pretrained("user/vit-locked")`` goes through the same path as :func:`load_locked` (the weights
are loaded only after every published file's SHA-256 match the card, and, with ``public_key``, after the owner's
signature checks) and keeps the local folder, so that :meth:`save_pretrained` and :meth:`push_to_hub` publish exactly
the verified files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .._files import LOCK_CONFIG_FILE, SIGNATURE_FILE
from .._utils import atomic_folder, refuse_replacing_user_files
from ..encoders import EncoderAdapter
from .authorization import Authorization
from .card import find_report
from .manifest import published_files
from .push import DEFAULT_COMMIT_MESSAGE, open_locked, push_locked_to_hub
from .signing import KeyLike, verify_signature

__all__ = ["LockedEncoder"]

DEFAULT_BATCH_SIZE = 32


def _release_files(folder: Path, include_mask: bool = False, signature: bool = True) -> list[Path]:
    """The top-level files of ``folder`` that a push publishes (no hidden file, mask, lock or Trainer state; the
    signature only with ``signature``)."""
    names = published_files(folder, include_mask=include_mask)
    return [folder / name for name in names if signature or name != SIGNATURE_FILE]


class LockedEncoder:
    """A locked encoder whose weights were checked against its model card.

    Attributes:
        encoder: the :class:`~hf_encoderlock.encoders.EncoderAdapter` (backbone + pooling + image processor).
        authorization: the :class:`Authorization` the card declares (authorized and prohibited domains, hashes).
        folder: the local folder the weights were read from (a Hub cache snapshot for a repository id).
        public_key: the public key the signature was checked with (``None``: the lock was loaded unsigned); copies
            made by :meth:`save_pretrained` are checked with it again.
    """

    def __init__(
        self,
        encoder: EncoderAdapter,
        authorization: Authorization,
        folder: str | Path,
        public_key: KeyLike | None = None,
    ) -> None:
        self.encoder = encoder
        self.authorization = authorization
        self.folder = Path(folder)
        self.public_key = public_key

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | Path,
        revision: str | None = None,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        pooling: str = "auto",
        model: nn.Module | None = None,
        public_key: KeyLike | None = None,
        preprocess_fn: Callable[[Sequence[Image.Image]], torch.Tensor] | None = None,
    ) -> LockedEncoder:
        """Download (or open) a locked encoder; its weights are loaded only once every published file's SHA-256
        match the card and the card agrees with ``encoderlock_config.json``.

        With ``public_key`` (the owner's PEM public key, a path or the PEM text) the lock must also carry the
        owner's signature (``model.sig``) over every file, unchanged since signing. ``revision=<commit sha>`` pins
        the download to a reviewed commit. Raises :class:`~hf_encoderlock.hub.LockVerificationError` otherwise.
        A folder saved from a plain torch module needs ``model`` (an instance of that module's class) and, as it
        holds no image processor, ``preprocess_fn`` (PIL images -> pixel tensor, as given to the trainer); the same
        verification runs first.
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
        return cls(opened.encoder, opened.authorization, opened.folder, public_key=public_key)

    # ------------------------------------------------------------------------------------------------- access
    @property
    def processor(self) -> Any:
        """The encoder's image processor (``None`` for a plain module with a preprocessing function)."""
        return self.encoder.image_processor

    @property
    def name(self) -> str:
        """The repository id or folder it was loaded from."""
        return self.encoder.name

    @property
    def pooling(self) -> str:
        """The default pooling of :meth:`features`."""
        return self.encoder.pooling

    def to(self, *args: Any, **kwargs: Any) -> LockedEncoder:
        """Move the encoder (``torch.nn.Module.to`` arguments); returns ``self``."""
        self.encoder.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def features(
        self,
        images: Image.Image | Sequence[Image.Image],
        pooling: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> torch.Tensor:
        """``(n, dim)`` float features of PIL ``images`` (one image gives ``n = 1``), in eval mode and without
        gradients, on the encoder's device; ``pooling`` defaults to the encoder's own."""
        batch = [images] if isinstance(images, Image.Image) else list(images)
        if not batch:
            raise ValueError("features() needs at least one image")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        wrong = next((i for i, image in enumerate(batch) if not isinstance(image, Image.Image)), None)
        if wrong is not None:
            raise TypeError(
                f"image {wrong} is a {type(batch[wrong]).__name__}: features() takes PIL images "
                "(pixel tensors go to .encoder.features)"
            )
        device = next(self.encoder.parameters(), torch.empty(0)).device
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            chunks = [
                self.encoder.features(self.encoder.preprocess(batch[start : start + batch_size]).to(device), pooling)
                for start in range(0, len(batch), batch_size)
            ]
        finally:
            self.encoder.train(was_training)
        return torch.cat(chunks).float()

    # ------------------------------------------------------------------------------------------ save and push
    def _copy_verified(self, target: Path, include_mask: bool = False, signature: bool = True) -> Path:
        """Copy the released files into ``target`` (atomically) and check the copies against the card (and the
        signature, when the lock was loaded with a public key and the copy keeps it)."""
        released = _release_files(self.folder, include_mask=include_mask, signature=signature)
        refuse_replacing_user_files(target, [path.name for path in released], "save_pretrained")
        with atomic_folder(target) as staging:
            for path in released:
                shutil.copy2(path, staging / path.name)  # follows a cache snapshot's links to the real bytes
            if signature and self.public_key is not None:
                verify_signature(staging, self.public_key)
            self.authorization.verify(staging)  # also catches files changed on disk since loading
        return Path(target).resolve()

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Copy the verified files (weights, configs, image processor, card, signature; never the lock's mask) into
        ``save_directory``, which :meth:`from_pretrained` then opens. Returns the folder.

        The files are copied, not re-serialised: a locked encoder's weights are the ones its card's hashes declare,
        so changes made to ``.encoder`` in memory are not saved. Raises ``LockVerificationError`` (and leaves
        ``save_directory`` as it was) when the files no longer match the card, and ``FileExistsError`` when
        ``save_directory`` holds a file of the same name this package did not write (a user's ``README.md``).
        """
        target = Path(save_directory)
        if target.resolve() == self.folder.resolve():
            if self.public_key is not None:
                verify_signature(target, self.public_key)
            self.authorization.verify(target)
            return target.resolve()
        return self._copy_verified(target)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        gated: bool | str = False,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = DEFAULT_COMMIT_MESSAGE,
        license: str | None = None,
        include_mask: bool = False,
        report: dict[str, Any] | None = None,
        sign_key: str | os.PathLike | None = None,
        sign_password: str | bytes | None = None,
        base_model: str | None = None,
    ) -> Any:
        """Push the verified files to ``repo_id`` with a card rendered for it (see :func:`push_locked_to_hub`);
        returns the ``CommitInfo``.

        The files are staged in a temporary copy first, so neither the Hub cache nor the source folder is rewritten.
        The card keeps the measured results of the current one (or of a matching ``report.json`` next to the source
        folder, or ``report``) and its license unless ``license`` is given. The mask is pushed only with
        ``include_mask=True`` (and only when the source folder has it). The source's signature is not copied: the
        card is rendered again for ``repo_id``, so a pushed copy is signed only when ``sign_key`` is given.
        """
        if report is None and (self.folder / LOCK_CONFIG_FILE).is_file():
            report = find_report(self.folder, json.loads((self.folder / LOCK_CONFIG_FILE).read_text()))
        with tempfile.TemporaryDirectory(prefix="encoderlock-push-") as scratch:
            staged = self._copy_verified(
                Path(scratch) / repo_id.rstrip("/").split("/")[-1], include_mask, signature=False
            )
            return push_locked_to_hub(
                staged,
                repo_id,
                private=private,
                gated=gated,
                token=token,
                commit_message=commit_message,
                revision=revision,
                report=report,
                include_mask=include_mask,
                license=license,
                sign_key=sign_key,
                sign_password=sign_password,
                base_model=base_model,
            )

    def __repr__(self) -> str:
        auth = self.authorization
        return (
            f"{type(self).__name__}({self.name!r}, authorized={list(auth.authorized)}, "
            f"prohibited={list(auth.prohibited)}, variant={auth.variant!r}, pooling={self.pooling!r}, "
            f"folder={str(self.folder)!r})"
        )
