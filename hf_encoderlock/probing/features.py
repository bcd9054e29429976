"""Extract an encoder's features for a dataset once (several poolings from ONE encoder pass), with a disk cache.

The cache key hashes the encoder's weights and preprocessing, the dataset's fingerprint and the poolings, so a
changed encoder (e.g. a freshly locked one) or dataset never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor
from tqdm.auto import tqdm

FEATURE_CACHE_VERSION = 1


class FeatureError(ValueError):
    """Features cannot be extracted as asked (unknown pooling, missing column, ...)."""


@dataclass
class FeatureSet:
    """Features of one dataset split: ``features[pooling]`` is ``(n, dim)`` float32, ``labels`` is ``(n,)``."""

    features: dict[str, Tensor]
    labels: Tensor
    cache_key: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def poolings(self) -> tuple[str, ...]:
        return tuple(self.features)


def resolve_poolings(encoder: Any, poolings: Sequence[str] | None) -> tuple[str, ...]:
    """The poolings to extract: all the encoder offers when ``poolings`` is None, else the checked request."""
    available = tuple(encoder.available_poolings())
    if poolings is None or list(poolings) in (["auto"], ["all"]):
        return available
    requested = tuple(dict.fromkeys(poolings))
    unknown = [p for p in requested if p not in available]
    if unknown:
        raise FeatureError(
            f"pooling(s) {unknown} not offered by encoder {getattr(encoder, 'name', '?')!r}; available: {available}"
        )
    if not requested:
        raise FeatureError("no pooling requested")
    return requested


def _hash_tensor(digest: hashlib._Hash, name: str, tensor: Tensor) -> None:
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes())


def _describe_preprocessing(encoder: Any) -> str:
    processor = getattr(encoder, "image_processor", None)
    if processor is not None and hasattr(processor, "to_json_string"):
        return processor.to_json_string()
    function = getattr(encoder, "preprocess_fn", None)
    if function is not None:
        return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"
    return type(processor).__name__


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """SHA-256 of the encoder's class, weights, buffers and preprocessing."""
    digest = hashlib.sha256(type(encoder).__qualname__.encode())
    backbone = getattr(encoder, "backbone", encoder)
    digest.update(type(backbone).__qualname__.encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        _hash_tensor(digest, name, tensor)
    digest.update(_describe_preprocessing(encoder).encode())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """The ``datasets`` fingerprint (changes with any transform), plus the row count as a guard."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        raise FeatureError("the dataset has no fingerprint; pass a datasets.Dataset")
    return f"{fingerprint}:{dataset.num_rows}"


def feature_cache_key(
    encoder: torch.nn.Module, dataset: Dataset, poolings: Sequence[str], image_column: str, label_column: str
) -> str:
    """Key of the cached features: encoder weights + dataset fingerprint + poolings (+ columns, cache version)."""
    parts = {
        "version": FEATURE_CACHE_VERSION,
        "encoder": encoder_fingerprint(encoder),
        "dataset": dataset_fingerprint(dataset),
        "poolings": list(poolings),
        "columns": [image_column, label_column],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cache_file(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"features-{key[:40]}.pt"


def _load_cached(path: Path, key: str, poolings: Sequence[str]) -> FeatureSet | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: recompute and overwrite
        return None
    if payload.get("key") != key or set(payload.get("features", {})) != set(poolings):
        return None
    return FeatureSet({p: payload["features"][p] for p in poolings}, payload["labels"], key)


def _save_cached(path: Path, features: FeatureSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        torch.save({"key": features.cache_key, "features": features.features, "labels": features.labels}, staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def _labels(dataset: Dataset, label_column: str) -> Tensor:
    column = dataset.select_columns([label_column]).with_format("numpy")[:][label_column]
    return torch.as_tensor(column, dtype=torch.long).reshape(-1)


def extract_features(
    encoder: Any,
    dataset: Dataset,
    poolings: Sequence[str] | None = None,
    batch_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    desc: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    progress: bool = True,
) -> FeatureSet:
    """Features of every image of ``dataset`` under each pooling, from one encoder pass per batch.

    Images go through ``encoder.preprocess(list_of_PIL)``, then ``encoder.pooled_features(pixels, poolings)`` under
    ``torch.inference_mode()`` with the encoder in eval mode (its mode is restored afterwards). With ``cache_dir``,
    features are stored under a key of encoder weights + dataset fingerprint + poolings and reused.
    """
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise FeatureError(f"dataset has no {column!r} column (columns: {dataset.column_names})")
    if batch_size < 1:
        raise FeatureError(f"batch_size must be >= 1, got {batch_size}")
    chosen = resolve_poolings(encoder, poolings)
    key = feature_cache_key(encoder, dataset, chosen, image_column, label_column)
    path = _cache_file(cache_dir, key) if cache_dir is not None else None
    if path is not None:
        cached = _load_cached(path, key, chosen)
        if cached is not None:
            return cached

    images = dataset.select_columns([image_column])
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    parts: dict[str, list[Tensor]] = {p: [] for p in chosen}
    was_training = encoder.training
    encoder.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=dataset.num_rows, desc=desc or "features", unit="img", disable=not progress, leave=False) as bar,
        ):
            for start in range(0, dataset.num_rows, batch_size):
                batch = images[start : start + batch_size][image_column]
                pixels = encoder.preprocess(batch).to(device)
                pooled = encoder.pooled_features(pixels, chosen)
                for pooling in chosen:
                    parts[pooling].append(pooled[pooling].float().cpu())
                bar.update(len(batch))
    finally:
        encoder.train(was_training)
    features = {
        p: torch.cat(chunks) if chunks else torch.zeros(0, getattr(encoder, "feature_dim", 0))
        for p, chunks in parts.items()
    }
    result = FeatureSet(features, _labels(dataset, label_column), key)
    if path is not None:
        _save_cached(path, result)
    return result
