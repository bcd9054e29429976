"""Data for a lock run: preprocessed domain tensors, lock/validation splits and two-domain batches."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import datasets.config
import numpy as np
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets import Image as ImageFeature
from PIL import Image as PILImage
from PIL import ImageOps
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from ..encoders import EncoderAdapter, EncoderError, convert_image, eight_bit_image
from .splits import stratified_indices

LOCK_COLUMNS = ("image", "label")  # the columns a lock reads; column_mapping renames a user's to these
# One image may hold at most this many pixels (8192 x 8192): beyond it a file is a decompression bomb, or an image too
# large to decode and resize safely (the processor holds several float copies of it). PIL's own limit is not relied
# on: a user may have lifted it.
MAX_IMAGE_PIXELS = 8192 * 8192
# Decoded pixels held at once before a chunk goes through the processor: bounds memory when images are large.
CHUNK_PIXELS = 8192 * 8192
# The share of prohibited images that may be byte-identical (after decoding) to authorized ones; beyond it the two
# domains are (partly) the same data, and a lock cannot both keep and break them.
MAX_SHARED_FRACTION = 0.05
# Class ids become the output size of every head the lock and the probes fit: an id far above the number of images
# (10^9 in one row) would make them allocate gigabytes. Without a ClassLabel, ids may reach the number of rows or this,
# whichever is larger (ImageNet-sized label spaces on a small subset stay accepted); a ClassLabel may declare at most
# MAX_CLASSES.
SPARSE_CLASS_IDS = 1000
MAX_CLASSES = 100_000
HASH_BYTES = 16  # blake2b digest size of an image's content hash


class LockDataError(ValueError):
    """Lock data that cannot be used; the message names the domain and the problem."""


class LockRows(Protocol):
    """What the lock reads from a domain, held in memory (:class:`DomainTensors`) or decoded per batch
    (:class:`~hf_encoderlock.data.streamed.StreamedDomain`)."""

    name: str
    labels: torch.Tensor | None
    num_classes: int
    content_hashes: torch.Tensor | None

    def __len__(self) -> int: ...

    @property
    def pixel_shape(self) -> tuple[int, ...]: ...

    def subset(self, index: torch.Tensor) -> LockRows: ...

    def take(self, index: torch.Tensor) -> DomainTensors: ...

    def pixel_chunks(self, batch_size: int) -> Iterator[torch.Tensor]: ...


@dataclass
class DomainTensors:
    """One domain's preprocessed images and labels (labels may be ``None`` for unlabelled data), in memory."""

    name: str
    pixel_values: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    #: ``(N, HASH_BYTES)`` uint8 content hashes of the decoded images (see :func:`image_content_hash`), when known.
    content_hashes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.pixel_values)

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """The shape of one preprocessed image."""
        return tuple(self.pixel_values.shape[1:])

    def subset(self, index: torch.Tensor) -> DomainTensors:
        """The rows ``index``."""
        labels = None if self.labels is None else self.labels[index]
        hashes = None if self.content_hashes is None else self.content_hashes[index]
        return DomainTensors(self.name, self.pixel_values[index], labels, self.num_classes, hashes)

    def take(self, index: torch.Tensor) -> DomainTensors:
        """The rows ``index`` as tensors (in memory already: the same as :meth:`subset`)."""
        return self.subset(index)

    def pixel_chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The pixel values in order, ``batch_size`` rows at a time."""
        yield from self.pixel_values.split(batch_size)


def as_lock_dataset(
    dataset: Any,
    name: str,
    column_mapping: Mapping[str, str] | None = None,
    split: str = "train",
    *,
    allow_local_images_under: str | os.PathLike | None = None,
) -> Dataset:
    """The ``datasets.Dataset`` a lock reads, with ``image`` (and ``label``) columns.

    ``column_mapping`` renames the user's columns (``{"img": "image", "fine_label": "label"}``); a ``DatasetDict``
    gives its ``split``. Streaming (iterable) datasets are refused in one line saying what to pass: the lock reads
    rows in random order. An ``image`` column of strings (file paths or URLs) is refused (see
    :func:`check_image_column`) unless ``allow_local_images_under`` names a folder: then its paths are read as
    images when they lie inside that folder (:func:`cast_local_images`), and URLs are still refused.
    """
    if isinstance(dataset, (IterableDataset, IterableDatasetDict)):
        raise LockDataError(
            f"domain {name!r}: a streaming dataset cannot be lock data: the lock reads rows in random order "
            "(batches, weight scoring, its validation split). Pass a datasets.Dataset: load_dataset(..., "
            "streaming=False) keeps it on disk, memory-mapped, and large domains are decoded per batch "
            "(lock_cache_bytes); or materialise a sample with Dataset.from_list(list(stream.take(N)))"
        )
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise LockDataError(f"domain {name!r}: the DatasetDict has no {split!r} split (splits: {list(dataset)})")
        dataset = dataset[split]
    if isinstance(dataset, (str, os.PathLike)):
        raise LockDataError(
            f"domain {name!r}: got the path or name {os.fspath(dataset)!r}, not a dataset. Load it first: "
            "hf_encoderlock.load_domain(...)['train'] (a built-in name, an image folder, a saved dataset or a Hub id; "
            "the CLI does this for you), or datasets.load_from_disk / load_dataset"
        )
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
    if allow_local_images_under is not None:
        allow_images_under(allow_local_images_under, name)
        if _is_string_column(dataset, "image"):
            return cast_local_images(dataset, "image", allow_local_images_under, name)
    check_image_column(dataset, name)
    return dataset


# ------------------------------------------------------------------------------------------ the image-path rule
# A datasets.Image value may be stored as {"bytes": None, "path": ...}: decoding it opens that path. Every reader of
# this package opens such a path only inside a folder the user named: a folder given as allow_local_images_under,
# or an image folder loaded as a domain (load_domain), for the rest of the process; and the datasets library's own
# download folder (a Hub dataset of image files is stored as paths there). Anything else is refused.
_ALLOWED_IMAGE_ROOTS: set[Path] = set()


def allow_images_under(root: str | os.PathLike, name: str = "images") -> Path:
    """Let stored image paths inside ``root`` be opened (for the rest of the process); returns the resolved root.
    Raises :class:`LockDataError` when ``root`` is not a folder."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise LockDataError(f"domain {name!r}: allow_local_images_under={os.fspath(root)!r} is not a folder")
    base = base.resolve()
    _ALLOWED_IMAGE_ROOTS.add(base)
    return base


def restore_image_roots(roots: Sequence[Path]) -> None:
    """Allow again, in this process, folders allowed in another (a DataLoader worker started with ``spawn`` does
    not inherit the allowances of the process that made its dataset)."""
    _ALLOWED_IMAGE_ROOTS.update(Path(root) for root in roots)


def allowed_image_roots() -> list[Path]:
    """The folders stored image paths may point into (see :func:`allow_images_under`)."""
    downloads = Path(datasets.config.DOWNLOADED_DATASETS_PATH).expanduser().resolve()
    return sorted({*_ALLOWED_IMAGE_ROOTS, downloads})


def check_stored_image_path(path: str, subject: str, error: type[ValueError] = LockDataError) -> Path:
    """The resolved file a stored image ``path`` names, when it lies in an allowed folder (symbolic links followed
    first); raises ``error`` otherwise, so that a dataset cannot make this machine open any file it names."""
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in allowed_image_roots()):
        raise error(
            f"{subject} is stored as a path to a file outside the dataset ({path!r}); such paths are opened only "
            "inside a folder you allow: pass allow_local_images_under=<folder> (EncoderLockTrainer, load_domain), "
            "or store the image bytes in the dataset"
        )
    return resolved


def _is_string_column(dataset, column: str) -> bool:
    feature = (getattr(dataset, "features", None) or {}).get(column)
    return getattr(feature, "dtype", None) in ("string", "large_string")


def check_image_column(dataset, name: str, column: str = "image") -> None:
    """Refuse an image column of strings: casting file paths or URLs to images would let a dataset make this
    machine read any local file or fetch any URL (even with ``HF_DATASETS_OFFLINE=1``). Images stored in the
    dataset (a ``datasets.Image`` column) are what a lock reads."""
    if not _is_string_column(dataset, column):
        return
    row = next((i for i, value in enumerate(dataset[column]) if value is not None), 0)
    raise LockDataError(
        f"domain {name!r}: row {row} of the {column!r} column holds str, not an image: a column of file paths or "
        "URLs is never read, so that a dataset cannot make the lock open local files or fetch URLs. Store the images "
        "in the dataset (a datasets.Image column), or allow local files under a folder you trust: "
        "allow_local_images_under=root (EncoderLockTrainer, load_domain)"
    )


def _is_local_reference(value: str) -> bool:
    """Whether ``value`` is a plain local path (no URL scheme, no fsspec chaining such as ``zip://a::https://b``)."""
    scheme = urlparse(value).scheme
    return "::" not in value and (scheme == "" or (len(scheme) == 1 and os.name == "nt"))  # "C:" is a drive


def cast_local_images(dataset: Dataset, column: str, root: str | os.PathLike, name: str) -> Dataset:
    """``dataset`` with its string ``column`` of file paths cast to a ``datasets.Image`` column: the explicit way to
    let a dataset point at local files. Every path must name an existing file inside ``root`` once resolved
    (relative paths are taken from ``root``; symbolic links are followed first); URLs are refused. Raises
    :class:`LockDataError` naming the domain and row."""
    base = allow_images_under(root, name)
    resolved = []
    for row, value in enumerate(dataset[column]):
        where = f"domain {name!r}: row {row} of the {column!r} column"
        if not isinstance(value, str) or not value:
            raise LockDataError(f"{where} holds {value!r}, not a file path")
        if not _is_local_reference(value):
            raise LockDataError(
                f"{where} is a URL ({value!r}): images are never fetched over the network; only files under "
                f"{str(base)!r} are read"
            )
        path = Path(value).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        if not path.is_relative_to(base):
            raise LockDataError(f"{where} ({value!r}) lies outside {str(base)!r}, the folder images may be read from")
        if not path.is_file():
            raise LockDataError(f"{where} names no file ({str(path)!r})")
        resolved.append({"bytes": None, "path": str(path)})  # the Image feature's storage
    order = list(dataset.column_names)
    replaced = dataset.remove_columns(column).add_column(column, resolved, feature=ImageFeature())
    return replaced.select_columns(order)


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
            raise LockDataError(
                f"domain {name!r}: no {column!r} column (columns: {columns}); name yours with column_mapping="
                f"{{'your_column': {column!r}}} (EncoderLockTrainer) or --{column}_column (CLI)"
            )
    feature = dataset.features[label_column]
    num_classes = getattr(feature, "num_classes", None)
    labels = label_tensor(dataset, name, label_column)
    if num_classes is not None and num_classes > MAX_CLASSES:
        raise LockDataError(
            f"domain {name!r}: the {label_column!r} ClassLabel declares {num_classes} classes; at most {MAX_CLASSES} "
            "are supported (every head would get one output per class)"
        )
    if num_classes is None:
        num_classes = int(labels.max()) + 1
        limit = max(len(dataset), SPARSE_CLASS_IDS)
        if num_classes > limit:
            row = int(labels.argmax())
            raise LockDataError(
                f"domain {name!r}: row {row} of {label_column!r} holds class id {num_classes - 1}, far beyond the "
                f"{len(dataset)} rows (class ids up to {limit - 1} are accepted without a ClassLabel; every head would "
                "get one output per id). Number the classes 0..K-1 (Dataset.class_encode_column, or cast the column "
                "to a datasets.ClassLabel)"
            )
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise LockDataError(
            f"domain {name!r}: labels must lie in [0, {num_classes - 1}], "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    if len(torch.unique(labels)) < 2:
        raise LockDataError(f"domain {name!r}: needs at least two classes, found {len(torch.unique(labels))}")
    return int(num_classes)


def check_lock_dataset(dataset, name: str, labelled: bool = True) -> int:
    """Validate a lock dataset before any long work (columns, labels, no string image column); returns its number
    of classes (0 when ``labelled`` is False)."""
    num_classes = check_labelled_dataset(dataset, name) if labelled else 0
    if not labelled and "image" not in dataset.column_names:
        raise LockDataError(
            f"domain {name!r}: no 'image' column (columns: {dataset.column_names}); name yours with "
            "column_mapping={'your_column': 'image'} (EncoderLockTrainer) or --image_column (CLI)"
        )
    if not labelled and len(dataset) == 0:
        raise LockDataError(f"domain {name!r}: the dataset is empty")
    check_image_column(dataset, name)
    return num_classes


def decode_and_preprocess(
    preprocess: Callable[[list[PILImage.Image]], torch.Tensor],
    dataset,
    name: str,
    rows: Sequence[int] | None = None,
    chunk_size: int = 256,
    bar: tqdm | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel values, content hashes)`` of every row of ``dataset`` (or of ``rows``, in their order).

    Images are decoded by :func:`read_images` (never from the network, at most :data:`MAX_IMAGE_PIXELS` each,
    16-bit and float pixels scaled to 8 bits, NaN refused) and go through ``preprocess`` in chunks of at most
    ``chunk_size`` images and :data:`CHUNK_PIXELS` decoded pixels, so memory stays bounded whatever the image sizes.
    """
    parts, hashes, chunk, chunk_pixels = [], [], [], 0
    for _, image, digest in read_images(dataset, name, chunk_size, rows):
        chunk.append(image)
        hashes.append(digest)
        chunk_pixels += image.width * image.height
        if len(chunk) >= chunk_size or chunk_pixels >= CHUNK_PIXELS:
            parts.append(preprocess(chunk))
            if bar is not None:
                bar.update(len(chunk))
            chunk, chunk_pixels = [], 0
    if chunk:
        parts.append(preprocess(chunk))
        if bar is not None:
            bar.update(len(chunk))
    return torch.cat(parts), hash_tensor(hashes)


def hash_tensor(hashes: Sequence[bytes]) -> torch.Tensor:
    """``(N, HASH_BYTES)`` uint8 tensor of content hashes."""
    return torch.frombuffer(bytearray(b"".join(hashes)), dtype=torch.uint8).reshape(-1, HASH_BYTES)


def preprocess_domain(
    encoder: EncoderAdapter,
    dataset,
    name: str,
    labelled: bool = True,
    chunk_size: int = 256,
    progress: bool = False,
) -> DomainTensors:
    """Run a datasets ``Dataset`` (``image`` [+ ``label``]) through the encoder's processor once and hold the result
    in memory (with a progress bar when ``progress``: thousands of large images take a while).

    See :func:`decode_and_preprocess`; the content hash of every decoded image is kept for :func:`content_overlap`.
    :func:`~hf_encoderlock.data.streamed.load_lock_domain` decides between this and decoding per batch.
    """
    num_classes = check_lock_dataset(dataset, name, labelled)
    with tqdm(total=len(dataset), desc=f"preprocess {name}", unit="img", disable=not progress, leave=False) as bar:
        pixels, content = decode_and_preprocess(encoder.preprocess, dataset, name, chunk_size=chunk_size, bar=bar)
    labels = torch.as_tensor(dataset["label"], dtype=torch.long) if labelled else None
    return DomainTensors(name, pixels, labels, num_classes, content)


def image_content_hash(image: PILImage.Image) -> bytes:
    """A digest of a decoded image: its mode, size, palette and pixel bytes. Two files that decode to the same
    pixels hash alike whatever their format or compression."""
    digest = hashlib.blake2b(digest_size=HASH_BYTES)
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    if image.mode in ("P", "PA"):
        digest.update(bytes(image.getpalette() or ()))
    digest.update(image.tobytes())
    return digest.digest()


def read_images(
    dataset, name: str, chunk_size: int = 256, rows: Sequence[int] | None = None
) -> Iterator[tuple[int, PILImage.Image, bytes]]:
    """``(row, image with 8-bit channels, content hash)`` for every row of the ``image`` column, or for ``rows``
    only, in their order.

    A ``datasets.Image`` column is decoded here from its stored bytes or local file, ``chunk_size`` stored rows at
    a time: never from a URL (a remote reference is refused), with each image's size checked against
    :data:`MAX_IMAGE_PIXELS` before its pixels are decoded, and the EXIF orientation applied as ``datasets`` does.
    Every problem raises :class:`LockDataError` naming the domain and row.
    """
    positions = range(len(dataset)) if rows is None else [int(row) for row in rows]
    chunks = [positions[start : start + chunk_size] for start in range(0, len(positions), chunk_size)]
    feature = (getattr(dataset, "features", None) or {}).get("image")
    if isinstance(feature, ImageFeature):
        stored = dataset.select_columns(["image"]).with_format("arrow")  # the stored {bytes, path}, not decoded
        for chunk in chunks:
            values = _stored_rows(stored, chunk).column("image").to_pylist()
            for row, value in zip(chunk, values):
                stored_image = open_stored_image(value, f"domain {name!r}: the image in row {row}")
                image, digest = _eight_bit(stored_image, row, name)
                yield row, _in_feature_mode(image, feature.mode, row, name), digest
        return
    for chunk in chunks:
        for row, value in zip(chunk, _stored_rows(dataset, chunk)["image"]):
            if not isinstance(value, PILImage.Image):
                raise LockDataError(
                    f"domain {name!r}: row {row} of the 'image' column holds {type(value).__name__}, not an image"
                )
            check_image_pixels(value.size, f"domain {name!r}: the image in row {row}")
            yield row, *_eight_bit(value, row, name)


def _stored_rows(dataset, chunk: Sequence[int]):
    """Rows ``chunk`` of ``dataset``: one slice when they are consecutive (a range), else one gather."""
    if isinstance(chunk, range):
        return dataset[chunk.start : chunk.stop]
    return dataset[list(chunk)]


def _eight_bit(image: PILImage.Image, row: int, name: str) -> tuple[PILImage.Image, bytes]:
    digest = image_content_hash(image)
    try:
        return eight_bit_image(image), digest
    except EncoderError as error:
        raise LockDataError(f"domain {name!r}: the image in row {row} {error}") from error


def _in_feature_mode(image: PILImage.Image, mode: str | None, row: int, name: str) -> PILImage.Image:
    """The image in the mode its ``datasets.Image(mode=...)`` feature promises (as ``datasets`` would decode it),
    converted faithfully where :func:`~hf_encoderlock.encoders.convert_image` knows how."""
    if not mode or image.mode == mode:
        return image
    try:
        return convert_image(image, mode) if mode in ("L", "RGB") else image.convert(mode)
    except EncoderError as error:
        raise LockDataError(f"domain {name!r}: the image in row {row} {error}") from error
    except ValueError as error:
        raise LockDataError(
            f"domain {name!r}: the image in row {row} cannot be converted to {mode} ({error})"
        ) from error


def check_image_pixels(size: tuple[int, int], subject: str, error: type[ValueError] = LockDataError) -> None:
    """Raise ``error`` (a message starting with ``subject``) when an image of ``size`` holds more than
    :data:`MAX_IMAGE_PIXELS` pixels."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise error(
            f"{subject} is {width}x{height} ({width * height:,} pixels), over the {MAX_IMAGE_PIXELS:,}-pixel limit "
            "(MAX_IMAGE_PIXELS): a decompression bomb or an image too large to decode safely; downscale it first"
        )


def open_stored_image(
    value: dict | None, subject: str, *, load: bool = True, error: type[ValueError] = LockDataError
) -> PILImage.Image:
    """Open one stored ``{bytes, path}`` value of a ``datasets.Image`` column, never over the network, and a stored
    path only inside an allowed folder (:func:`check_stored_image_path`).

    The size is checked (:func:`check_image_pixels`) from the header, before any pixel is decoded; with ``load``
    the pixels are then decoded and the EXIF orientation applied (as ``datasets`` decodes). Without ``load`` only
    the header of a stored file is read: close the image (``with open_stored_image(...) as image``). Every problem
    raises ``error`` with a message starting with ``subject`` (e.g. ``"domain 'red': the image in row 5"``).
    """
    data, path = (value or {}).get("bytes"), (value or {}).get("path")
    if data is None and path is None:
        raise error(f"{subject} is missing (None)")
    if data is None and not _is_local_reference(path):
        raise error(
            f"{subject} is a remote reference ({path!r}), not data in the dataset: images are never fetched over "
            "the network; download them and store them in the dataset"
        )
    if data is None:
        path = str(check_stored_image_path(path, subject, error))
    try:
        if data is None and load:
            with open(path, "rb") as file:  # read whole, so that no file handle outlives the decode
                data = file.read()
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data) if data is not None else path)  # reads the header only
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as problem:
        raise error(f"{subject} is refused as a decompression bomb ({problem})") from problem
    except Exception as problem:  # PIL raises many types on malformed files; UnidentifiedImageError is an OSError
        raise error(f"{subject} cannot be decoded ({problem})") from problem
    check_image_pixels(image.size, subject, error)  # before the pixels are decoded: memory stays bounded
    if not load:
        return image
    try:
        image.load()
        if image.getexif().get(PILImage.ExifTags.Base.Orientation) is not None:
            image = ImageOps.exif_transpose(image)
    except Exception as problem:
        raise error(f"{subject} cannot be decoded ({problem})") from problem
    return image


def content_overlap(authorized: LockRows, prohibited: LockRows, max_fraction: float = MAX_SHARED_FRACTION) -> float:
    """The share of prohibited images that are byte-identical, after decoding, to an authorized image (compared by
    content hash, so in any order); raises :class:`LockDataError` when it exceeds ``max_fraction``.

    Uses the hashes :func:`preprocess_domain` records; when either side lacks them, the preprocessed pixel values
    are hashed instead (identical images preprocess identically).
    """
    use_pixels = authorized.content_hashes is None or prohibited.content_hashes is None
    authorized_hashes = _row_hashes(authorized, use_pixels)
    prohibited_hashes = _row_hashes(prohibited, use_pixels)
    if not prohibited_hashes:
        return 0.0
    known = set(authorized_hashes)
    shared = sum(digest in known for digest in prohibited_hashes)
    fraction = shared / len(prohibited_hashes)
    if set(prohibited_hashes) == known:
        raise LockDataError(
            f"the prohibited domain is identical to the authorized domain: {prohibited.name!r} holds the same images "
            f"as {authorized.name!r} (byte-identical after decoding, in any order)"
        )
    if fraction > max_fraction:
        raise LockDataError(
            f"domain {prohibited.name!r}: {shared} of its {len(prohibited_hashes)} prohibited images ({fraction:.0%}) "
            f"are byte-identical, after decoding, to images of the authorized domain {authorized.name!r}; at most "
            f"{max_fraction:.0%} may be shared (MAX_SHARED_FRACTION): a lock cannot break the images it must keep"
        )
    return fraction


def check_distinct_images(data: LockRows, minimum: int) -> None:
    """Refuse a domain with fewer than ``minimum`` distinct images (by content hash, or by preprocessed pixels when
    no hashes were recorded): copies of one image give features without spread, which neither a head nor the lock's
    objective can learn from."""
    distinct = len(set(_row_hashes(data, data.content_hashes is None)))
    if distinct < minimum:
        what = "all identical" if distinct == 1 else f"only {distinct} distinct images"
        raise LockDataError(
            f"domain {data.name!r}: its {len(data)} images are {what} (byte-identical after decoding); at least "
            f"{minimum} distinct images are needed"
        )


def _row_hashes(data: LockRows, use_pixels: bool) -> list[bytes]:
    if not use_pixels:
        return [bytes(row) for row in data.content_hashes.numpy()]
    shape = str(data.pixel_shape).encode()
    return [
        hashlib.blake2b(shape + row.tobytes(), digest_size=HASH_BYTES).digest()
        for chunk in data.pixel_chunks(256)
        for row in chunk.detach().cpu().contiguous().numpy()
    ]


def stratified_split(data: LockRows, fraction: float, seed: int, views: int = 1) -> tuple[LockRows, LockRows]:
    """Split into (lock-train, validation) with :func:`~hf_encoderlock.data.splits.stratified_indices` (by label
    when labels exist); rows keep their original order within each part.

    With ``views`` > 1 the rows are ``views`` blocks of the same images (the originals, then one transformed copy
    per block, as :func:`~hf_encoderlock.probing.transforms.with_transformed_copies` lays them out): the originals
    are split, and each part takes every view of its images, again in view blocks (see :func:`one_view_rows`)."""
    if views == 1:
        labels = None if data.labels is None else data.labels.numpy()
        kept, held = stratified_indices(labels, fraction, seed, size=len(data))
        return data.subset(torch.as_tensor(np.sort(kept))), data.subset(torch.as_tensor(np.sort(held)))
    if views < 1 or len(data) % views:
        raise LockDataError(f"domain {data.name!r}: {len(data)} rows are not {views} blocks of equal size")
    images = len(data) // views
    labels = None if data.labels is None else data.labels[:images].numpy()
    kept, held = stratified_indices(labels, fraction, seed, size=images)

    def every_view(bases: np.ndarray) -> torch.Tensor:
        bases = torch.as_tensor(np.sort(bases))
        return torch.cat([view * images + bases for view in range(views)])

    return data.subset(every_view(kept)), data.subset(every_view(held))


def original_rows(data: LockRows, views: int) -> LockRows:
    """The first of ``views`` blocks of ``data`` (laid out as :func:`stratified_split` leaves them): the original
    images, without their transformed copies."""
    return data if views == 1 else data.subset(torch.arange(len(data) // views))


def one_view_rows(rows: torch.Tensor, views: int, size: int, view: int) -> torch.Tensor:
    """The rows showing the images of ``rows`` under view ``view``, each once (sorted), in data of ``size`` rows laid
    out as ``views`` blocks of the same images (as :func:`stratified_split` leaves them): an attacker's probe sees
    one view of every image, so a batch's information measures are taken under one view, not across a mix of them.
    Two views of one image in ``rows`` become one row: a duplicate would be its own nearest neighbour."""
    images = size // views
    return torch.unique(view * images + rows % images)


def batch_view(rows: torch.Tensor, views: int, seed: int) -> int:
    """The view a batch of ``rows`` shows: drawn from the rows and ``seed`` alone, so it is the same in any
    DataLoader worker and on a resumed run, and every view is drawn alike over a shuffled pass."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + int(rows.sum()))
    return int(torch.randint(views, (1,), generator=generator))


class PairedDomainDataset(TorchDataset):
    """Item ``i`` pairs authorized example ``i`` with a prohibited example (cycling the shorter domain)."""

    def __init__(self, authorized: LockRows, prohibited: LockRows, seed: int = 0) -> None:
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
    """Gathers the tensors of a batch of index pairs into the inputs ``compute_loss`` expects. For streamed domains
    this is where a batch's images are decoded and preprocessed: in the DataLoader's workers when
    ``dataloader_num_workers`` > 0, on each process's own share of the batches under DDP.

    With ``prohibited_per_authorized`` k > 1 the batch holds every item's prohibited example but only every k-th
    item's authorized one: the prohibited side of a batch is k times the authorized side, still without an image
    twice when the prohibited domain is the longer one (each of its rows is in one item per pass).

    With ``prohibited_views`` > 1 (prohibited rows in view blocks, see :func:`stratified_split`) every batch shows
    its prohibited images under one view, drawn per batch by :func:`batch_view` with ``seed``."""

    def __init__(
        self,
        authorized: LockRows,
        prohibited: LockRows,
        prohibited_per_authorized: int = 1,
        prohibited_views: int = 1,
        seed: int = 0,
    ) -> None:
        self.authorized = authorized
        self.prohibited = prohibited
        self.prohibited_per_authorized = prohibited_per_authorized
        self.prohibited_views = prohibited_views
        self.seed = seed

    def __call__(self, items: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        a_index = torch.tensor([item["authorized_index"] for item in items[:: self.prohibited_per_authorized]])
        p_index = torch.tensor([item["prohibited_index"] for item in items])
        if self.prohibited_views > 1:
            view = batch_view(p_index, self.prohibited_views, self.seed)
            p_index = one_view_rows(p_index, self.prohibited_views, len(self.prohibited), view)
        authorized, prohibited = self.authorized.take(a_index), self.prohibited.take(p_index)
        batch = {
            "authorized_index": a_index,  # rows of the lock's authorized data: per-image cached features
            "authorized_pixel_values": authorized.pixel_values,
            "authorized_labels": authorized.labels,
            "prohibited_pixel_values": prohibited.pixel_values,
        }
        if prohibited.labels is not None:
            batch["prohibited_labels"] = prohibited.labels
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
        check_image_column(dataset, domain, image_column)  # the cast below would read paths and fetch URLs
        feature = dataset.features[label_column]
        class_names = getattr(feature, "names", None) or [str(c) for c in range(num_classes)]
        offset = len(names)
        names += [f"{domain}/{name}" for name in class_names]
        part = dataset.select_columns([image_column, label_column]).cast_column(image_column, ImageFeature())
        part = part.cast_column(label_column, Value("int64"))
        parts.append(part.map(lambda row, shift=offset: {label_column: row[label_column] + shift}))
    label = ClassLabel(names=names)
    return concatenate_datasets([part.cast_column(label_column, label) for part in parts])
