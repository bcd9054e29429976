"""What a locked encoder's card authorizes, and the check that its files are the ones the card describes.

:class:`Authorization` is the card's machine-readable ``encoderlock:`` block parsed back: the authorized and
prohibited domains, the variant, the mask size and the SHA-256 of every published file. :meth:`Authorization.verify`
compares those hashes with a folder's files and the block with the folder's ``encoderlock_config.json``;
:func:`hf_encoderlock.hub.load_locked` runs it before any weight is read.

What such a hash proves: that the files are the ones this card describes. It cannot prove who wrote the card (anyone
who can push to the repository can change a file and its hash together) and the card cannot hash itself; a signature
(:mod:`hf_encoderlock.hub.signing`, ``model.sig``) covers the card too and names the signer's key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from .._files import CARD_FILE, CARD_FORMAT, CARD_FORMAT_V2, LOCK_CONFIG_FILE
from .._utils import as_finite_float
from .manifest import HASH_ALGORITHM, UNHASHED_FILES, accountable_files, is_private_file, sha256_file
from .public_names import canonical_domain, declared_domains

METADATA_KEY = "encoderlock"


class LockVerificationError(RuntimeError):
    """A locked encoder's card is missing, lacks the ``encoderlock:`` block, or does not match its files, its lock
    config or its signature."""


@dataclass(frozen=True)
class Authorization:
    """The authorization a locked encoder's card declares (parsed from its ``encoderlock:`` block).

    ``weights`` and ``files`` are the SHA-256 of the weight files and of every other published file except the
    card (``files`` is empty for cards written before it existed, ``encoderlock-card/v1``, which
    :meth:`verify` refuses).
    """

    authorized: tuple[str, ...]
    prohibited: tuple[str, ...]
    variant: str
    objective: str | None
    mask_fraction: float | None
    mask_count: int | None
    weights: dict[str, str]
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = CARD_FORMAT_V2
    poolings: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> Authorization:
        """Parse an ``encoderlock:`` block; :class:`LockVerificationError` when it is missing or incomplete."""
        if not isinstance(metadata, dict):
            raise LockVerificationError(f"the model card has no '{METADATA_KEY}:' block in its YAML front matter")
        required = ("authorized", "prohibited", "variant", "weights")
        if metadata.get("format", CARD_FORMAT) != CARD_FORMAT:
            required += ("files",)  # only v1 cards hashed the weights alone
        missing = [key for key in required if not metadata.get(key)]
        if missing:
            raise LockVerificationError(f"the card's '{METADATA_KEY}:' block lacks {', '.join(missing)}")
        if metadata.get("hash_algorithm", HASH_ALGORITHM) != HASH_ALGORITHM:
            raise LockVerificationError(f"unsupported hash algorithm {metadata.get('hash_algorithm')!r}")
        return cls(
            authorized=tuple(metadata["authorized"]),
            prohibited=tuple(metadata["prohibited"]),
            variant=str(metadata["variant"]),
            objective=metadata.get("objective"),
            mask_fraction=as_finite_float(metadata.get("mask_fraction")),
            mask_count=metadata.get("mask_count"),
            weights=dict(metadata["weights"]),
            accuracy=dict(metadata.get("accuracy") or {}),
            format=str(metadata.get("format", CARD_FORMAT)),
            poolings=tuple(metadata.get("poolings") or ()),
            files=dict(metadata.get("files") or {}),
        )

    @classmethod
    def from_card(cls, card_path: str | Path) -> Authorization:
        """Parse the ``README.md`` at ``card_path``."""
        path = Path(card_path)
        if not path.is_file():
            raise LockVerificationError(f"no model card ({CARD_FILE}) found at {path.parent}")
        try:
            card = ModelCard.load(path)
        except Exception as error:  # malformed YAML or model-index
            raise LockVerificationError(f"the model card at {path} could not be parsed: {error}") from error
        return cls.from_metadata(card.data.to_dict().get(METADATA_KEY))

    def is_prohibited(self, domain: str) -> bool:
        """Whether the card names ``domain`` as prohibited."""
        return domain in self.prohibited

    def is_authorized(self, domain: str) -> bool:
        """Whether the card names ``domain`` as authorized."""
        return domain in self.authorized

    def verify(self, folder: str | Path) -> None:
        """Check that ``folder`` holds exactly the files the card hashes (weights, configs, image processor, lock
        config: every published file but the card and its signature), with the declared SHA-256, and that the
        card's ``encoderlock:`` block agrees with ``encoderlock_config.json``.

        Raises :class:`LockVerificationError` naming every file or field that differs. A private file the card
        hashes (the mask, when it was pushed) may be absent: loading never reads it.
        """
        folder = Path(folder)
        if not self.files:
            raise LockVerificationError(
                f"the model card is an {self.format} card: it hashes the weight files only, so config.json, the "
                "image processor and encoderlock_config.json cannot be verified; render it again from trusted files "
                "(hf_encoderlock.write_model_card(folder), or push the lock again)"
            )
        declared = {**self.files, **self.weights}
        present = set(accountable_files(folder)) - set(UNHASHED_FILES)
        present |= {n for n in declared if is_private_file(n) and (folder / n).is_file()}
        problems = [f"{n}: missing" for n in sorted(set(declared) - present) if not is_private_file(n)]
        problems += [f"{n}: not declared in the card" for n in sorted(present - set(declared))]
        for name in sorted(set(declared) & present):
            actual = sha256_file(folder / name)
            if actual != declared[name]:
                problems.append(f"{name}: sha256 {actual} does not match the card's {declared[name]}")
        if problems:
            raise LockVerificationError(
                "the files do not match the model card's encoderlock metadata: " + "; ".join(problems)
            )
        problems = self.disagreements(folder / LOCK_CONFIG_FILE)
        if problems:
            raise LockVerificationError(
                f"the model card's encoderlock block disagrees with {LOCK_CONFIG_FILE}: " + "; ".join(problems)
            )

    def disagreements(self, lock_config: str | Path) -> list[str]:
        """Where the card's block differs from ``encoderlock_config.json`` (domains, variant, objective, poolings,
        mask count); empty when it agrees or the folder has no lock config (a plain saved encoder).

        A zero-shot lock's config names no real prohibited domain, so its card's prohibited list is not compared.
        """
        path = Path(lock_config)
        if not path.is_file():
            return []
        try:
            lock = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            return [f"{LOCK_CONFIG_FILE} cannot be read ({error})"]
        authorized, prohibited = declared_domains(lock)
        card_a, card_p = [canonical_domain(d) for d in self.authorized], [canonical_domain(d) for d in self.prohibited]
        pairs = [("authorized", card_a, authorized or None), ("prohibited", card_p, prohibited)]
        pairs += [
            ("variant", self.variant, lock.get("variant")),
            ("objective", self.objective, lock.get("objective")),
            ("poolings", list(self.poolings), [str(p) for p in lock.get("poolings") or []] or None),
            ("mask_count", self.mask_count, (lock.get("mask") or {}).get("count")),
        ]
        return [
            f"{key}: the card says {card!r}, {LOCK_CONFIG_FILE} says {config!r}"
            for key, card, config in pairs
            if config is not None and card != config
        ]
