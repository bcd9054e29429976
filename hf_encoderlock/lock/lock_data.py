"""The lock's data: what the lock reads from the user's datasets, and the splits it works on.

:class:`DatasetReader` reads every dataset given to a lock the same way (column mapping, split of a ``DatasetDict``,
local image files only where allowed); :meth:`LockData.load` turns the authorized and prohibited datasets into the
lock's rows: images decoded and hashed once (:func:`~hf_encoderlock.data.streamed.load_lock_domain`), the
prohibited side of the variant (labelled, pseudo-labelled by k-means, or generated for zero-shot), the
attacker-view copies of ``prohibited_transforms``, the checks (enough distinct images, same pixel shape, no shared
image), then the seeded lock / validation splits and the fixed samples each self-challenge encodes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..data.lock_tensors import (
    LockDataError,
    LockRows,
    as_lock_dataset,
    check_distinct_images,
    check_labelled_dataset,
    content_overlap,
    label_tensor,
    original_rows,
    stratified_split,
)
from ..data.streamed import load_lock_domain
from ..encoders import EncoderAdapter
from ..probing.transforms import TRANSFORMS, domain_stats, parse_transform_spec, with_transformed_copies
from .config import EncoderLockConfig
from .variants.generators import generate_prohibited
from .variants.pseudo_labels import cluster_pseudo_labels

EVAL_KEYS = ("authorized", "prohibited")  # the keys of eval_dataset: which lock head scores each set
MIN_IMAGES_PER_DOMAIN = 8  # below this, a validation split carved from the lock data is meaningless
#: The splits a self-challenge encodes, in the order their samples are seeded (args.seed + position).
CHALLENGE_SETS = ("lock_authorized", "val_authorized", "lock_prohibited", "val_prohibited")


@dataclass(frozen=True)
class DatasetReader:
    """How every dataset given to a lock is read: ``column_mapping`` renames columns to ``image`` / ``label``,
    ``split`` is read from a ``DatasetDict``, and an ``image`` column of file paths may only name files under
    ``allow_local_images_under`` (URLs never: a dataset must not make the machine read or fetch anything else)."""

    column_mapping: Mapping[str, str] = field(default_factory=dict)
    split: str = "train"
    allow_local_images_under: str | os.PathLike | None = None

    def read(self, dataset: Any, name: str) -> Any:
        """``dataset`` as the lock reads it (``name`` appears in errors)."""
        return as_lock_dataset(
            dataset, name, dict(self.column_mapping), self.split, allow_local_images_under=self.allow_local_images_under
        )

    def read_eval(self, datasets: dict[str, Any]) -> dict[str, Any]:
        """An ``eval_dataset`` dict, each set read like the lock data."""
        return {key: self.read(value, f"eval_dataset[{key!r}]") for key, value in datasets.items()}


def sample_rows(data: LockRows, limit: int | None, seed: int) -> LockRows:
    """``data``, or a fixed seeded sample of ``limit`` of its rows (in their original order) when it holds more."""
    if limit is None or len(data) <= limit:
        return data
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit]
    return data.subset(torch.sort(chosen).values)


def concat_poolings(pooled: Mapping[str, torch.Tensor], poolings: Sequence[str]) -> torch.Tensor:
    """The prohibited view: features of ``poolings`` concatenated, in order."""
    return torch.cat([pooled[p] for p in poolings], dim=1)


def check_domain_size(data: LockRows) -> None:
    """Enough images, and enough distinct ones (copies of one image give no gradient to lock with)."""
    if len(data) < MIN_IMAGES_PER_DOMAIN:
        raise LockDataError(f"domain {data.name!r}: {len(data)} images, at least {MIN_IMAGES_PER_DOMAIN} needed")
    check_distinct_images(data, MIN_IMAGES_PER_DOMAIN)


def check_domains(authorized: LockRows, prohibited: LockRows) -> None:
    """The two domains preprocess to one pixel shape and share no image (by content hash, in any order)."""
    if authorized.pixel_shape != prohibited.pixel_shape:
        raise LockDataError(
            f"authorized and prohibited images preprocess to different shapes ({authorized.pixel_shape} and "
            f"{prohibited.pixel_shape})"
        )
    content_overlap(authorized, prohibited)


def with_attacker_views(args: EncoderLockConfig, authorized_dataset: Any, prohibited_dataset: Any) -> Any:
    """The prohibited lock images plus one copy per ``prohibited_transforms`` entry: the inputs an attacker who knows
    the method shows the encoder (the adaptive suite's transforms, one implementation for both sides). Reference
    statistics for the ``match_*`` transforms come from the authorized images, as the attacker's do."""
    names = [parse_transform_spec(spec)[0] for spec in args.prohibited_transforms]
    needs_reference = any(TRANSFORMS[name].needs_reference for name in names)
    reference = domain_stats(authorized_dataset, seed=args.seed) if needs_reference else None
    return with_transformed_copies(prohibited_dataset, args.prohibited_transforms, reference, args.seed)


def prohibited_views(args: EncoderLockConfig) -> int:
    """How many views of each prohibited image the lock holds: the originals plus one per ``prohibited_transforms``
    entry."""
    return 1 + len(args.prohibited_transforms)


def with_pseudo_labels(
    encoder: EncoderAdapter, args: EncoderLockConfig, data: LockRows, poolings: Sequence[str] | None, views: int = 1
) -> LockRows:
    """``data`` labelled by k-means clusters of the unlocked encoder's features (of ``poolings`` concatenated, the
    prohibited view the objective sees; ``None``: the encoder's default pooling).

    With ``views`` > 1 (``data`` in view blocks, originals first) the originals are clustered and each copy takes its
    original's label, as a transform does not change an image's class (clusters of all rows could put a whole
    transformed view in a few clusters)."""
    poolings = [*(poolings or [encoder.pooling])]
    originals = original_rows(data, views)
    device, was_training = args.device, encoder.training
    encoder.to(device).eval()
    with torch.no_grad():
        features = torch.cat(
            [
                concat_poolings(encoder.pooled_features(chunk.to(device), poolings), poolings).float().cpu()
                for chunk in originals.pixel_chunks(args.per_device_train_batch_size)
            ]
        )
    encoder.train(was_training)
    labels = cluster_pseudo_labels(features, args.num_pseudo_classes, args.seed, args.pseudo_label_restarts)
    labels = labels.repeat(views)
    return replace(data, labels=labels, num_classes=args.num_pseudo_classes)


@dataclass
class LockData:
    """The lock's rows: lock and validation splits of each domain, the challenge samples, and how the prohibited
    side was made (``zero_shot_source``: the generators, or ``["user-supplied"]``; ``pseudo_labelled``: k-means)."""

    lock_authorized: LockRows
    val_authorized: LockRows
    lock_prohibited: LockRows
    val_prohibited: LockRows
    #: What each self-challenge encodes (keys :data:`CHALLENGE_SETS`): every image, or a fixed seeded sample of at
    #: most ``challenge_max_images``.
    challenge_sets: dict[str, LockRows]
    zero_shot_source: list[str] | None = None
    pseudo_labelled: bool = False
    #: Views per prohibited image (the originals and one copy per ``prohibited_transforms`` entry). Above 1, each
    #: prohibited split is that many blocks of the same images, the originals first (see ``stratified_split``).
    prohibited_views: int = 1
    #: ``prohibited_view_batches``: each prohibited batch shows one of the views (else batches mix them)
    view_batches: bool = False

    @property
    def batch_views(self) -> int:
        """The views a prohibited batch draws one of: :attr:`prohibited_views` with :attr:`view_batches`, else 1."""
        return self.prohibited_views if self.view_batches else 1

    @property
    def original_prohibited(self) -> LockRows:
        """The lock split's prohibited images without their transformed copies."""
        return original_rows(self.lock_prohibited, self.prohibited_views)

    @classmethod
    def load(
        cls,
        encoder: EncoderAdapter,
        args: EncoderLockConfig,
        authorized_dataset: Any,
        prohibited_dataset: Any,
        authorized_name: str,
        prohibited_name: str,
        prohibited_poolings: Sequence[str] | None = None,
    ) -> LockData:
        """Decode, check and split the datasets (already read by a :class:`DatasetReader`).

        ``prohibited_dataset`` is labelled (``variant="supervised"``), images only (``"unsupervised"``: pseudo-labels
        from ``encoder``'s features under ``prohibited_poolings``), or ``None`` / synthetic (``"zero-shot"``:
        generated from the authorized dataset by ``args.zero_shot_generators`` when ``None``).
        """
        authorized = load_lock_domain(
            encoder, authorized_dataset, authorized_name, True, args.lock_cache_bytes, not args.disable_tqdm
        )
        check_domain_size(authorized)
        zero_shot_source = None
        if args.variant == "zero-shot":
            if prohibited_dataset is None:
                prohibited_dataset = generate_prohibited(
                    args.zero_shot_generators, authorized_dataset, args.zero_shot_images, args.seed
                )
                zero_shot_source = list(args.zero_shot_generators)
            else:
                zero_shot_source = ["user-supplied"]
            labelled = "label" in prohibited_dataset.column_names
        elif prohibited_dataset is None:
            raise LockDataError(
                f"variant {args.variant!r} needs a prohibited dataset (only variant='zero-shot' works without)"
            )
        else:
            labelled = args.variant == "supervised"
        if not labelled:
            columns = getattr(prohibited_dataset, "column_names", None) or []
            if "image" not in columns:
                raise LockDataError(
                    f"domain {prohibited_name!r}: no 'image' column (columns: {columns}); name yours with "
                    "column_mapping={'your_column': 'image'}"
                )
            prohibited_dataset = prohibited_dataset.select_columns(["image"])  # prohibited labels are never read
        if args.prohibited_transforms:
            prohibited_dataset = with_attacker_views(args, authorized_dataset, prohibited_dataset)
        prohibited = load_lock_domain(
            encoder, prohibited_dataset, prohibited_name, labelled, args.lock_cache_bytes, not args.disable_tqdm
        )
        check_domain_size(prohibited)  # before pseudo-labels: k-means of copies of one image is meaningless
        views = prohibited_views(args)
        pseudo_labelled = prohibited.labels is None
        if pseudo_labelled:
            prohibited = with_pseudo_labels(encoder, args, prohibited, prohibited_poolings, views)
        check_domains(authorized, prohibited)
        lock_authorized, val_authorized = stratified_split(authorized, args.validation_fraction, args.seed)
        lock_prohibited, val_prohibited = stratified_split(prohibited, args.validation_fraction, args.seed, views)
        splits = dict(
            lock_authorized=lock_authorized,
            val_authorized=val_authorized,
            lock_prohibited=lock_prohibited,
            val_prohibited=val_prohibited,
        )
        challenge_sets = {
            key: sample_rows(splits[key], args.challenge_max_images, args.seed + offset)
            for offset, key in enumerate(CHALLENGE_SETS)
        }
        return cls(
            **splits,
            challenge_sets=challenge_sets,
            zero_shot_source=zero_shot_source,
            pseudo_labelled=pseudo_labelled,
            prohibited_views=views,
            view_batches=args.prohibited_view_batches,
        )

    @property
    def pairs(self) -> int:
        """Pairs of images in one pass over the lock data: as many as the longer domain's lock split holds."""
        return max(len(self.lock_authorized), len(self.lock_prohibited))

    def check_eval_datasets(self, datasets: dict[str, Any] | None) -> None:
        """``{"authorized": ds, "prohibited": ds}`` whose labels the lock's heads can score (at most those keys)."""
        if datasets is None:
            return
        if not isinstance(datasets, dict) or not datasets or not set(datasets) <= set(EVAL_KEYS):
            got = sorted(datasets) if isinstance(datasets, dict) else type(datasets).__name__
            raise LockDataError(f"eval_dataset must be a dict with keys among {EVAL_KEYS}, got {got}")
        for key, dataset in datasets.items():
            lock = self.lock_authorized if key == "authorized" else self.lock_prohibited
            where = f"eval_dataset[{key!r}]"
            check_labelled_dataset(dataset, where)
            top = int(label_tensor(dataset, where).max())
            if top >= lock.num_classes:
                raise LockDataError(
                    f"{where}: label {top} is out of range for the {lock.num_classes} classes of the lock's "
                    f"{key} domain {lock.name!r}"
                )
