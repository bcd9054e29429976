"""Data for a lock run: preprocessed domain tensors, lock/validation splits and two-domain batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from ..encoders import EncoderAdapter
from .splits import stratified_indices

LOCK_COLUMNS = ("image", "label")  # the columns a lock reads; column_mapping renames a user's to these


class LockDataError(ValueError):
    """Lock data that cannot be used; the message names the domain and the problem."""


@dataclass
class DomainTensors:
    """One domain's preprocessed images and labels (labels may be ``None`` for unlabelled data)."""

    name: str
    pixel_values: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int

    def __len__(self) -> int:
        return len(self.pixel_values)

    def subset(self, index: torch.Tensor) -> DomainTensors:
        labels = None if self.labels is None else self.labels[index]
        return DomainTensors(self.name, self.pixel_values[index], labels, self.num_classes)

    def batches(self, batch_size: int, count: int, generator: torch.Generator):
        """``count`` random batches (without replacement inside a batch)."""
        for _ in range(count):
            index = torch.randperm(len(self), generator=generator)[:batch_size]
            yield self.subset(index)

    def shard(self, part: int, parts: int) -> DomainTensors:
        """Rows ``part, part + parts, ...``: one of ``parts`` near-equal slices (a batch split over ranks or
        micro-batches)."""
        index = torch.arange(part, len(self), parts)
        return self.subset(index if len(index) else torch.tensor([part % len(self)]))


def as_lock_dataset(
    dataset: Any,
    name: str,
    column_mapping: Mapping[str, str] | None = None,
    split: str = "train",
) -> Dataset:
    """The ``datasets.Dataset`` a lock reads, with ``image`` (and ``label``) columns.

    ``column_mapping`` renames the user's columns (``{"img": "image", "fine_label": "label"}``); a ``DatasetDict``
    gives its ``split``. Streaming (iterable) datasets are refused in one line saying what to pass: the lock
    preprocesses every image up front.
    """
    if isinstance(dataset, (IterableDataset, IterableDatasetDict)):
        raise LockDataError(
            f"domain {name!r}: a streaming dataset cannot be lock data: the lock preprocesses every image up front. "
            "Pass a datasets.Dataset, e.g. load_dataset(..., streaming=False), or materialise a sample with "
            "Dataset.from_list(list(stream.take(N)))"
        )
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise LockDataError(f"domain {name!r}: the DatasetDict has no {split!r} split (splits: {list(dataset)})")
        dataset = dataset[split]
    if not isinstance(dataset, Dataset):
        raise LockDataError(f"domain {name!r}: expected a datasets.Dataset, got {type(dataset).__name__}")
    mapping = dict(column_mapping or {})
    unknown = [column for column in mapping if column not in dataset.column_names]
    if unknown:
        raise LockDataError(
            f"domain {name!r}: column_mapping names {unknown}, not in the dataset (columns: {dataset.column_names})"
        )
    bad_targets = sorted(set(mapping.values()) - set(LOCK_COLUMNS))
    if bad_targets:
        raise LockDataError(f"domain {name!r}: column_mapping may only map to {LOCK_COLUMNS}, got {bad_targets}")
    if mapping:
        # keep the mapped columns, and the lock columns the mapping does not replace
        keep = [
            column
            for column in dataset.column_names
            if column in mapping or (column in LOCK_COLUMNS and column not in mapping.values())
        ]
        dataset = dataset.select_columns(keep).rename_columns(mapping)
    return dataset


def label_tensor(dataset, name: str, label_column: str = "label") -> torch.Tensor:
    """The label column as an integer tensor; missing, string, float or nested labels are refused, naming a row."""
    values = dataset[label_column]
    try:
        labels = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as error:
        for row, value in enumerate(values):
            if value is None:
                raise LockDataError(f"domain {name!r}: the {label_column!r} of row {row} is missing (None)") from error
            if not isinstance(value, (int, float)):
                raise LockDataError(
                    f"domain {name!r}: labels must be integer class ids; row {row} of {label_column!r} holds "
                    f"{type(value).__name__} {value!r} (hf_encoderlock.data.domains.load_domain encodes string labels)"
                ) from error
        problem = f"the {label_column!r} column is not a list of class ids ({error})"
        raise LockDataError(f"domain {name!r}: {problem}") from error
    if labels.dtype.is_floating_point:
        raise LockDataError(f"domain {name!r}: labels must be integers, got {labels.dtype}")
    if labels.dim() != 1:
        raise LockDataError(f"domain {name!r}: labels must be one class id per image, got shape {tuple(labels.shape)}")
    return labels


def check_labelled_dataset(dataset, name: str, label_column: str = "label", image_column: str = "image") -> int:
    """Validate a labelled image dataset before any long work; returns its number of classes."""
    columns = getattr(dataset, "column_names", None) or []
    if len(dataset) == 0:
        raise LockDataError(f"domain {name!r}: the dataset is empty")
    for column in (image_column, label_column):
        if column not in columns:
            raise LockDataError(f"domain {name!r}: no {column!r} column (columns: {columns})")
    feature = dataset.features[label_column]
    num_classes = getattr(feature, "num_classes", None)
    labels = label_tensor(dataset, name, label_column)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise LockDataError(
            f"domain {name!r}: labels must lie in [0, {num_classes - 1}], "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    if len(torch.unique(labels)) < 2:
        raise LockDataError(f"domain {name!r}: needs at least two classes, found {len(torch.unique(labels))}")
    return int(num_classes)


def preprocess_domain(
    encoder: EncoderAdapter,
    dataset,
    name: str,
    labelled: bool = True,
    chunk_size: int = 256,
    progress: bool = False,
) -> DomainTensors:
    """Run a datasets ``Dataset`` (``image`` [+ ``label``]) through the encoder's processor once (with a progress
    bar when ``progress``: thousands of large images take a while)."""
    num_classes = check_labelled_dataset(dataset, name) if labelled else 0
    if not labelled and "image" not in dataset.column_names:
        raise LockDataError(f"domain {name!r}: no 'image' column (columns: {dataset.column_names})")
    if not labelled and len(dataset) == 0:
        raise LockDataError(f"domain {name!r}: the dataset is empty")
    parts = []
    bar = tqdm(total=len(dataset), desc=f"preprocess {name}", unit="img", disable=not progress, leave=False)
    for start in range(0, len(dataset), chunk_size):
        images = _decoded_images(dataset, start, min(start + chunk_size, len(dataset)), name)
        bad = next((i for i, image in enumerate(images) if not hasattr(image, "convert")), None)
        if bad is not None:
            raise LockDataError(
                f"domain {name!r}: row {start + bad} of the 'image' column holds {type(images[bad]).__name__}, "
                "not an image"
            )
        parts.append(encoder.preprocess(images))
        bar.update(len(images))
    bar.close()
    labels = torch.as_tensor(dataset["label"], dtype=torch.long) if labelled else None
    return DomainTensors(name, torch.cat(parts), labels, num_classes)


def _decoded_images(dataset, start: int, stop: int, name: str) -> list:
    """Rows ``start:stop`` of the ``image`` column, decoded; an undecodable image is reported by row."""
    try:
        return list(dataset[start:stop]["image"])
    except (OSError, ValueError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
        for row in range(start, stop):
            try:
                dataset[row]["image"]
            except (OSError, ValueError, SyntaxError) as row_error:
                problem = f"the image in row {row} cannot be decoded ({row_error})"
                raise LockDataError(f"domain {name!r}: {problem}") from row_error
        problem = f"images in rows {start}-{stop - 1} cannot be decoded ({error})"
        raise LockDataError(f"domain {name!r}: {problem}") from error


def stratified_split(data: DomainTensors, fraction: float, seed: int) -> tuple[DomainTensors, DomainTensors]:
    """Split into (lock-train, validation) with :func:`~hf_encoderlock.data.splits.stratified_indices` (by label
    when labels exist); rows keep their original order within each part."""
    labels = None if data.labels is None else data.labels.numpy()
    kept, held = stratified_indices(labels, fraction, seed, size=len(data))
    return data.subset(torch.as_tensor(np.sort(kept))), data.subset(torch.as_tensor(np.sort(held)))


class PairedDomainDataset(TorchDataset):
    """Item ``i`` pairs authorized example ``i`` with a prohibited example (cycling the shorter domain)."""

    def __init__(self, authorized: DomainTensors, prohibited: DomainTensors, seed: int = 0) -> None:
        self.authorized = authorized
        self.prohibited = prohibited
        generator = torch.Generator().manual_seed(seed)
        length = max(len(authorized), len(prohibited))
        self._a_index = torch.randperm(len(authorized), generator=generator).repeat(length // len(authorized) + 1)
        self._p_index = torch.randperm(len(prohibited), generator=generator).repeat(length // len(prohibited) + 1)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"authorized_index": int(self._a_index[i]), "prohibited_index": int(self._p_index[i])}


class PairedDomainCollator:
    """Gathers the tensors of a batch of index pairs into the inputs ``compute_loss`` expects."""

    def __init__(self, authorized: DomainTensors, prohibited: DomainTensors) -> None:
        self.authorized = authorized
        self.prohibited = prohibited

    def __call__(self, items: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        a_index = torch.tensor([item["authorized_index"] for item in items])
        p_index = torch.tensor([item["prohibited_index"] for item in items])
        batch = {
            "authorized_pixel_values": self.authorized.pixel_values[a_index],
            "authorized_labels": self.authorized.labels[a_index],
            "prohibited_pixel_values": self.prohibited.pixel_values[p_index],
        }
        if self.prohibited.labels is not None:
            batch["prohibited_labels"] = self.prohibited.labels[p_index]
        return batch


def combine_labelled_domains(named: dict[str, object], label_column: str = "label", image_column: str = "image"):
    """One ``datasets.Dataset`` from several labelled domains: class ``c`` of the ``k``-th domain becomes class
    ``offset_k + c`` (named ``"domain/class"``), so a single authorized head keeps every domain's classes apart.

    Used to lock with several authorized domains at once; a single domain is returned unchanged.
    """
    from datasets import ClassLabel, Value, concatenate_datasets
    from datasets import Image as ImageFeature

    if len(named) == 1:
        return next(iter(named.values()))
    names: list[str] = []
    parts = []
    for domain, dataset in named.items():
        num_classes = check_labelled_dataset(dataset, domain, label_column, image_column)
        feature = dataset.features[label_column]
        class_names = getattr(feature, "names", None) or [str(c) for c in range(num_classes)]
        offset = len(names)
        names += [f"{domain}/{name}" for name in class_names]
        part = dataset.select_columns([image_column, label_column]).cast_column(image_column, ImageFeature())
        part = part.cast_column(label_column, Value("int64"))
        parts.append(part.map(lambda row, shift=offset: {label_column: row[label_column] + shift}))
    label = ClassLabel(names=names)
    return concatenate_datasets([part.cast_column(label_column, label) for part in parts])
