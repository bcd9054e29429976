"""Lock data decoded per batch: memory that does not grow with the dataset.

A lock reads its images many times (weight scoring, masked updates, self-challenges). Small domains are decoded and
preprocessed once and held in memory (:class:`~hf_encoderlock.data.lock_tensors.DomainTensors`): for 32-px images
that is fastest. A domain whose preprocessed pixels would exceed a byte budget (``EncoderLockConfig.lock_cache_bytes``)
is a :class:`StreamedDomain` instead: it keeps the ``datasets.Dataset`` (memory-mapped Arrow; the OS pages it in
and out), the labels and a 16-byte content hash per image, and decodes and preprocesses only the rows asked for.
:func:`load_lock_domain` decides between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image as PILImage
from tqdm.auto import tqdm

from ..encoders import EncoderAdapter
from .lock_tensors import (
    DomainTensors,
    allowed_image_roots,
    check_lock_dataset,
    decode_and_preprocess,
    hash_tensor,
    preprocess_domain,
    read_images,
    restore_image_roots,
)

DEFAULT_LOCK_CACHE_BYTES = 512 * 2**20  # per domain: 891 images at 224 px (3 x 224 x 224 float32), 43,690 at 32 px


@dataclass
class DecodeCounter:
    """How much a streamed domain (and every subset of it) has decoded: what tests and benchmarks read to check that
    no step decodes more than its batch. Counts in the process that decodes (DataLoader workers keep their own)."""

    images: int = 0  #: images decoded so far
    largest: int = 0  #: the most images decoded by one call


@dataclass
class StreamedDomain:
    """One domain's lock images, decoded and preprocessed per request from its ``datasets.Dataset``.

    Holds ``rows`` (the dataset rows that belong to this domain or split), their labels and content hashes;
    :meth:`take` decodes some of them into :class:`DomainTensors`, :meth:`pixel_chunks` walks all of them a chunk at a
    time. :meth:`subset` is lazy (a validation split of a streamed domain is streamed too).
    """

    name: str
    dataset: Any  #: a ``datasets.Dataset`` with an ``image`` column
    rows: torch.Tensor  #: the dataset rows of this domain, in order
    labels: torch.Tensor | None
    num_classes: int
    preprocess: Callable[[list[PILImage.Image]], torch.Tensor]
    pixel_shape: tuple[int, ...]
    content_hashes: torch.Tensor | None = None
    chunk_size: int = 256
    counter: DecodeCounter = field(default_factory=DecodeCounter)
    #: the folders stored image paths may point into, as allowed where this domain was made (travels to workers)
    image_roots: tuple[Path, ...] = field(default_factory=lambda: tuple(allowed_image_roots()))

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: torch.Tensor) -> StreamedDomain:
        """The rows ``index``, still streamed (nothing is decoded)."""
        labels = None if self.labels is None else self.labels[index]
        hashes = None if self.content_hashes is None else self.content_hashes[index]
        return replace(self, rows=self.rows[index], labels=labels, content_hashes=hashes)  # counter shared

    def take(self, index: torch.Tensor) -> DomainTensors:
        """Decode and preprocess the rows ``index`` (a batch)."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        rows = self.rows[index].tolist()
        restore_image_roots(self.image_roots)
        pixels, hashes = decode_and_preprocess(self.preprocess, self.dataset, self.name, rows, self.chunk_size)
        self.counter.images += len(rows)
        self.counter.largest = max(self.counter.largest, len(rows))
        labels = None if self.labels is None else self.labels[index]
        return DomainTensors(self.name, pixels, labels, self.num_classes, hashes)

    def pixel_chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The pixel values in order, ``batch_size`` rows decoded at a time."""
        for start in range(0, len(self), batch_size):
            yield self.take(torch.arange(start, min(start + batch_size, len(self)))).pixel_values


def preprocessed_bytes_per_image(encoder: EncoderAdapter, dataset, name: str) -> tuple[int, tuple[int, ...]]:
    """Bytes one preprocessed image of ``dataset`` takes in memory, and its shape (from its first image)."""
    _, image, _ = next(read_images(dataset, name, rows=[0]))
    pixels = encoder.preprocess([image])
    return pixels[0].numel() * pixels.element_size(), tuple(pixels.shape[1:])


def load_lock_domain(
    encoder: EncoderAdapter,
    dataset,
    name: str,
    labelled: bool = True,
    cache_bytes: int = DEFAULT_LOCK_CACHE_BYTES,
    progress: bool = False,
    chunk_size: int = 256,
) -> DomainTensors | StreamedDomain:
    """One domain of lock data: in memory when its preprocessed pixels fit in ``cache_bytes``, else streamed.

    Either way every image is decoded once here (a bad image is named by row before any long work) and its content
    hash kept (:func:`~hf_encoderlock.data.lock_tensors.content_overlap`); a streamed domain keeps only the hashes.
    """
    num_classes = check_lock_dataset(dataset, name, labelled)
    per_image, shape = preprocessed_bytes_per_image(encoder, dataset, name)
    if per_image * len(dataset) <= cache_bytes:
        return preprocess_domain(encoder, dataset, name, labelled, chunk_size, progress)
    hashes = []
    with tqdm(total=len(dataset), desc=f"check {name}", unit="img", disable=not progress, leave=False) as bar:
        for _, _, digest in read_images(dataset, name, chunk_size):
            hashes.append(digest)
            bar.update()
    labels = torch.as_tensor(dataset["label"], dtype=torch.long) if labelled else None
    images = dataset.select_columns(["image"])  # labels live in the tensor; the dataset is read for pixels only
    rows = torch.arange(len(dataset))
    return StreamedDomain(
        name, images, rows, labels, num_classes, encoder.preprocess, shape, hash_tensor(hashes), chunk_size
    )
