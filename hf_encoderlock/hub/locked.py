"""A locked encoder as one object, the way PEFT wraps an adapter: verified loading, features, save and push.

``LockedEncoder.from_pretrained("user/vit-locked")`` goes through the same path as :func:`load_locked` (the weights
are loaded only after their SHA-256 match the card) and keeps the local folder, so that :meth:`save_pretrained` and
:meth:`push_to_hub` publish exactly the verified files.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .._files import LOCK_CONFIG_FILE, MASK_FILE
from .._utils import atomic_folder
from ..encoders import EncoderAdapter
from .card import Authorization, find_report
from .push import DEFAULT_COMMIT_MESSAGE, PUSH_IGNORE_PATTERNS, open_locked, push_locked_to_hub

__all__ = ["LockedEncoder"]

DEFAULT_BATCH_SIZE = 32


def _release_files(folder: Path, include_mask: bool = False) -> list[Path]:
    """The top-level files of ``folder`` that a push publishes (no hidden file, mask, lock or Trainer state)."""
    ignored = [p for p in PUSH_IGNORE_PATTERNS if not (include_mask and p == MASK_FILE)]
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not any(fnmatch.fnmatch(path.name, pattern) for pattern in ignored)
    )


class LockedEncoder:
    """A locked encoder whose weights were checked against its model card.

    Attributes:
        encoder: the :class:`~hf_encoderlock.encoders.EncoderAdapter` (backbone + pooling + image processor).
        authorization: the :class:`Authorization` the card declares (authorized and prohibited domains, hashes).
        folder: the local folder the weights were read from (a Hub cache snapshot for a repository id).
    """

    def __init__(self, encoder: EncoderAdapter, authorization: Authorization, folder: str | Path) -> None:
        self.encoder = encoder
        self.authorization = authorization
        self.folder = Path(folder)

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
    ) -> LockedEncoder:
        """Download (or open) a locked encoder; its weights are loaded only once their SHA-256 match the card.

        Raises :class:`~hf_encoderlock.hub.LockVerificationError` otherwise. ``model`` is needed only for a folder
        saved from a plain torch module (an instance of that module's class).
        """
        opened = open_locked(repo_id_or_path, revision, token, cache_dir=cache_dir, pooling=pooling, model=model)
        return cls(opened.encoder, opened.authorization, opened.folder)

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
    def _copy_verified(self, target: Path, include_mask: bool = False) -> Path:
        """Copy the released files into ``target`` (atomically) and check the copies against the card."""
        with atomic_folder(target) as staging:
            for path in _release_files(self.folder, include_mask=include_mask):
                shutil.copy2(path, staging / path.name)  # follows a cache snapshot's links to the real bytes
            self.authorization.verify(staging)  # also catches files changed on disk since loading
        return Path(target).resolve()

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Copy the verified files (weights, configs, image processor, card; never the lock's mask) into
        ``save_directory``, which :meth:`from_pretrained` then opens. Returns the folder.

        The files are copied, not re-serialised: a locked encoder's weights are the ones its card's hashes declare,
        so changes made to ``.encoder`` in memory are not saved. Raises ``LockVerificationError`` (and leaves
        ``save_directory`` as it was) when the files no longer match the card.
        """
        target = Path(save_directory)
        if target.resolve() == self.folder.resolve():
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
    ) -> Any:
        """Push the verified files to ``repo_id`` with a card rendered for it (see :func:`push_locked_to_hub`);
        returns the ``CommitInfo``.

        The files are staged in a temporary copy first, so neither the Hub cache nor the source folder is rewritten.
        The card keeps the measured results of the current one (or of a matching ``report.json`` next to the source
        folder, or ``report``) and its license unless ``license`` is given. The mask is pushed only with
        ``include_mask=True`` (and only when the source folder has it).
        """
        if report is None and (self.folder / LOCK_CONFIG_FILE).is_file():
            report = find_report(self.folder, json.loads((self.folder / LOCK_CONFIG_FILE).read_text()))
        with tempfile.TemporaryDirectory(prefix="encoderlock-push-") as scratch:
            staged = self._copy_verified(Path(scratch) / repo_id.rstrip("/").split("/")[-1], include_mask)
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
            )

    def __repr__(self) -> str:
        auth = self.authorization
        return (
            f"{type(self).__name__}({self.name!r}, authorized={list(auth.authorized)}, "
            f"prohibited={list(auth.prohibited)}, variant={auth.variant!r}, pooling={self.pooling!r}, "
            f"folder={str(self.folder)!r})"
        )
