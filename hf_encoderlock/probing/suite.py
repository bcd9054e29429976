"""The probe suite: the attacker that measures a lock honestly.

Given an encoder and labelled domains, :func:`run_probe_suite` extracts features once per split (every pooling the
encoder offers, one encoder pass, cached), then trains fresh heads (linear, MLP, kNN) over a small hyper-parameter
grid and several seeds at chosen fractions of the training split. Per seed, a stratified validation split is carved
from train (:func:`hf_encoderlock.data.splits.stratified_indices`); the training fraction is a stratified, seeded,
nested subsample of the rest. Hyper-parameters, head kind and pooling are chosen on validation; test data only ever
scores the chosen heads. The same suite on the encoder's random-init twin gives the attacker's no-encoder baseline.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict

from .._utils import package_versions
from ..data.domains import DomainSpec, load_domain
from ..data.splits import stratified_indices
from ..encoders import load_encoder
from .features import FeatureSet, extract_features, resolve_poolings
from .heads import (
    HEAD_KINDS,
    HeadGroup,
    HeadTrainingConfig,
    accuracy,
    best_head,
    predict,
    torch_threads,
    train_head_groups,
)
from .probe_report import (
    ENCODER_ROLE,
    TWIN_ROLE,
    ProbeReport,
    ProbeScore,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitPlan:
    """How an attacker's training split is divided: a validation part, then nested training fractions, per seed."""

    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    validation_fraction: float
    min_train_per_class: int


@dataclass
class ProbeConfig:
    """Every setting of the probe suite (the attacker's budget and search space)."""

    fractions: tuple[float, ...] = field(
        default=(0.01, 0.1, 1.0), metadata={"help": "Fractions of the training split (after validation) to probe with."}
    )
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2), metadata={"help": "Seeds: each draws its own validation split, subsample and head init."}
    )
    heads: tuple[str, ...] = field(default=("linear", "mlp", "knn"), metadata={"help": f"Head kinds, of {HEAD_KINDS}."})
    poolings: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Poolings to probe (None: every pooling the encoder offers)."}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of the training split carved out (stratified) for validation."}
    )
    min_train_per_class: int = field(
        default=1, metadata={"help": "Smallest number of training examples per class at any fraction."}
    )
    linear_lrs: tuple[float, ...] = field(default=(1e-2, 3e-2), metadata={"help": "Adam learning rates, linear head."})
    linear_weight_decays: tuple[float, ...] = field(
        default=(0.0, 1e-3), metadata={"help": "L2 penalties on the linear head's weights."}
    )
    mlp_lrs: tuple[float, ...] = field(default=(3e-3, 1e-2), metadata={"help": "Adam learning rates, MLP head."})
    mlp_weight_decays: tuple[float, ...] = field(default=(0.0,), metadata={"help": "L2 penalties on MLP weights."})
    mlp_hidden: tuple[int, ...] = field(
        default=(256,), metadata={"help": "Hidden widths of the MLP head (one or two layers)."}
    )
    normalization: str = field(
        default="whiten",
        metadata={
            "help": "Linear/MLP input normalisation fit on the probe's training data: 'whiten' or 'standardize'."
        },
    )
    whiten_shrinkage: float | None = field(
        default=None, metadata={"help": "Whitening shrinkage towards standardisation in [0, 1]; None: Ledoit-Wolf."}
    )
    knn_ks: tuple[int, ...] = field(default=(1, 3, 5, 10, 20), metadata={"help": "Neighbour counts tried by kNN."})
    epochs: int = field(default=15, metadata={"help": "Maximum epochs per gradient-trained head."})
    head_batch_size: int | None = field(
        default=256, metadata={"help": "Rows per head optimiser step (sliced from cached features); None: full batch."}
    )
    patience: int | None = field(
        default=5, metadata={"help": "Early stop after this many epochs without a validation improvement."}
    )
    batch_size: int = field(default=256, metadata={"help": "Images per encoder forward pass during extraction."})
    image_column: str = field(default="image", metadata={"help": "Image column of every domain."})
    label_column: str = field(default="label", metadata={"help": "Label column of every domain."})
    train_split: str = field(default="train", metadata={"help": "Split the attacker trains (and validates) on."})
    test_split: str = field(default="test", metadata={"help": "Split the chosen heads are scored on."})
    domain_seed: int = field(default=0, metadata={"help": "Seed passed to load_domain for named domains."})
    random_twin_seed: int = field(default=0, metadata={"help": "Seed of the encoder's random-init twin."})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch threads for feature extraction (None: leave as is); restored after."}
    )
    head_num_threads: int | None = field(
        default=2,
        metadata={
            "help": "torch threads for head fitting and scoring, at most the process's own count "
            "(benchmarks/main_job_speed.py compares 1 and 2); None: as is."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars during extraction."})

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.heads = tuple(self.heads)
        self.poolings = tuple(self.poolings) if self.poolings is not None else None
        checks = [
            (bool(self.fractions) and all(0.0 < f <= 1.0 for f in self.fractions), "fractions must be in (0, 1]"),
            (bool(self.seeds), "seeds must not be empty"),
            (len(set(self.seeds)) == len(self.seeds), "seeds must be distinct"),
            (
                bool(self.heads) and set(self.heads) <= set(HEAD_KINDS),
                f"heads must be a non-empty subset of {HEAD_KINDS}",
            ),
            (0.0 < self.validation_fraction < 1.0, "validation_fraction must be in (0, 1)"),
            (self.min_train_per_class >= 1, "min_train_per_class must be >= 1"),
            (bool(self.linear_lrs) and bool(self.linear_weight_decays), "the linear grid must not be empty"),
            (bool(self.mlp_lrs) and bool(self.mlp_weight_decays), "the MLP grid must not be empty"),
            (1 <= len(self.mlp_hidden) <= 2, "mlp_hidden must give one or two hidden widths"),
            (bool(self.knn_ks) and min(self.knn_ks) >= 1, "knn_ks must be positive"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ProbeConfig: {message}")

    def split_plan(self) -> SplitPlan:
        """The validation part and training fractions of the attacker's training split."""
        return SplitPlan(tuple(self.seeds), tuple(self.fractions), self.validation_fraction, self.min_train_per_class)

    def head_training(self) -> HeadTrainingConfig:
        return HeadTrainingConfig(
            epochs=self.epochs,
            batch_size=self.head_batch_size,
            patience=self.patience,
            normalization=self.normalization,
            whiten_shrinkage=self.whiten_shrinkage,
            num_threads=None,
        )

    def grid(self, kind: str) -> dict[str, Any]:
        """Keyword arguments of :func:`train_head_groups` for ``kind``."""
        if kind == "linear":
            return {"lrs": self.linear_lrs, "weight_decays": self.linear_weight_decays}
        if kind == "mlp":
            return {"lrs": self.mlp_lrs, "weight_decays": self.mlp_weight_decays, "hidden": self.mlp_hidden}
        return {"ks": self.knn_ks}


@dataclass
class SeedSplit:
    """Row indices into a domain's training split for one seed: validation and one training subset per fraction."""

    seed: int
    validation: np.ndarray
    train: dict[float, np.ndarray]


# ------------------------------------------------------------------------------------------------- splitting
def _stratified_subsample(labels: np.ndarray, fraction: float, minimum: int, order: np.ndarray) -> np.ndarray:
    """Positions (into ``labels``) of a stratified subsample of size ``round(fraction * n)``.

    Per class, ``fraction * n_c`` rows (largest remainder, at least ``minimum``), taken as a prefix of the seeded
    ``order``, so smaller fractions are subsets of larger ones and sizes do not depend on the seed.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * fraction
    take = np.floor(exact).astype(int)
    spare = int(round(fraction * labels.size)) - int(take.sum())
    for k in np.lexsort((np.arange(classes.size), -(exact - take)))[: max(spare, 0)]:
        take[k] += 1
    take = np.clip(take, np.minimum(minimum, counts), counts)
    ordered_labels = labels[order]
    parts = [order[ordered_labels == c][:t] for c, t in zip(classes, take)]
    return np.sort(np.concatenate(parts))


def split_training_rows(labels: np.ndarray, plan: SplitPlan) -> list[SeedSplit]:
    """Per seed: a stratified validation split carved from train
    (:func:`~hf_encoderlock.data.splits.stratified_indices`) and nested,
    stratified training subsets at every fraction. Depends on labels and seeds only (shared by encoder and twin)."""
    splits = []
    for seed in plan.seeds:
        pool, validation = stratified_indices(labels.astype(np.int64), plan.validation_fraction, seed)
        order = np.random.default_rng([seed, 1]).permutation(pool.size)
        subsets = {
            f: pool[_stratified_subsample(labels[pool], f, plan.min_train_per_class, order)] for f in plan.fractions
        }
        splits.append(SeedSplit(seed, validation, subsets))
    return splits


# ---------------------------------------------------------------------------------------------------- inputs
# Below this many test images the standard error of an accuracy near 50%, 0.5 / sqrt(n), exceeds 2.5 points: close to
# the 3-point victim-versus-twin gap under which the reports already call differences noise.
SMALL_TEST_SPLIT = 400


_SMALL_SPLITS_NAMED: set[tuple[str, str, int]] = set()  # once per process: the main job probes the same data 3 times


def warn_if_test_split_is_small(name: str, split: str, num_images: int) -> None:
    """Log, once per domain, that accuracies on a test split of fewer than :data:`SMALL_TEST_SPLIT` images carry a
    wide error."""
    if 0 < num_images < SMALL_TEST_SPLIT and (name, split, num_images) not in _SMALL_SPLITS_NAMED:
        _SMALL_SPLITS_NAMED.add((name, split, num_images))
        logger.warning(
            "domain %r: its %r split has %d images, so every accuracy measured on it has a standard error of up to "
            "%.1f points and differences of a few points between encoders or attacks are noise there; %d or more "
            "test images give a standard error under 2.5 points",
            name,
            split,
            num_images,
            50 / math.sqrt(num_images),
            SMALL_TEST_SPLIT,
        )


def load_domains(
    domains: Mapping[str, DatasetDict] | Sequence[Any],
    config: ProbeConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, DatasetDict]:
    """``{display name: DatasetDict}`` from a mapping (checked) or domain specs (loaded with ``load_domain``)."""
    config = config or ProbeConfig()
    if isinstance(domains, Mapping):
        resolved = dict(domains)
    else:
        if isinstance(domains, (str, os.PathLike)):
            domains = [domains]
        resolved = {}
        for spec in domains:
            name = spec.display_name if isinstance(spec, DomainSpec) else DomainSpec(os.fspath(spec)).display_name
            resolved[name] = load_domain(spec, seed=config.domain_seed, cache_dir=cache_dir)
    if not resolved:
        raise ValueError("no domains to probe")
    for name, dataset in resolved.items():
        for split in (config.train_split, config.test_split):
            if split not in dataset:
                raise ValueError(f"domain {name!r} has no {split!r} split (splits: {list(dataset)})")
        warn_if_test_split_is_small(name, config.test_split, len(dataset[config.test_split]))
    return resolved


def _num_classes(dataset: DatasetDict, config: ProbeConfig, labels: Sequence[torch.Tensor]) -> int:
    feature = dataset[config.train_split].features.get(config.label_column)
    if isinstance(feature, ClassLabel):
        return int(feature.num_classes)
    return int(max(int(part.max()) for part in labels if part.numel()) + 1)


def _load(encoder: Any) -> Any:
    return load_encoder(encoder)


# ------------------------------------------------------------------------------------------------- the suite
def probe_features(
    train: FeatureSet,
    test: FeatureSet,
    splits: Sequence[SeedSplit],
    num_classes: int,
    config: ProbeConfig,
    role: str = ENCODER_ROLE,
    domain: str = "domain",
) -> list[ProbeScore]:
    """Train every (pooling, fraction, head kind) on cached features, all seeds in one batched fit per cell."""
    threads = config.head_num_threads
    with torch_threads(min(threads, torch.get_num_threads()) if threads else None):
        return _probe_cells(train, test, splits, num_classes, config, role, domain)


def _probe_cells(train, test, splits, num_classes, config, role, domain) -> list[ProbeScore]:
    training = config.head_training()
    scores = []
    for pooling in train.poolings:
        train_x, test_x = train.features[pooling], test.features[pooling]
        for fraction in config.fractions:
            groups = [
                HeadGroup(
                    train_x[s.train[fraction]],
                    train.labels[s.train[fraction]],
                    train_x[s.validation],
                    train.labels[s.validation],
                    (s.seed,),
                )
                for s in splits
            ]
            for kind in config.heads:
                fitted = train_head_groups(groups, kind, num_classes=num_classes, config=training, **config.grid(kind))
                chosen = [best_head(heads) for heads in fitted]
                test_acc = [accuracy(predict(head.module, test_x).numpy(), test.labels.numpy()) for head in chosen]
                scores.append(
                    ProbeScore(
                        role=role,
                        domain=domain,
                        head=kind,
                        pooling=pooling,
                        fraction=fraction,
                        n_train=int(len(splits[0].train[fraction])),
                        n_validation=int(len(splits[0].validation)),
                        n_test=len(test),
                        seeds=[s.seed for s in splits],
                        test_accuracy=[float(a) for a in test_acc],
                        validation_accuracy=[h.val_accuracy for h in chosen],
                        hyperparameters=[h.hyperparameters for h in chosen],
                    )
                )
    return scores


def run_probe_suite(
    encoder: Any,
    domains: Mapping[str, DatasetDict] | Sequence[Any],
    config: ProbeConfig | None = None,
    random_twin: bool | Any = True,
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> ProbeReport:
    """Probe ``encoder`` on every domain; optionally its random-init twin too.

    Args:
        encoder: an ``EncoderAdapter``, a saved encoder folder or a Hub id.
        domains: ``{name: DatasetDict}`` or domain specs for :func:`hf_encoderlock.data.domains.load_domain`.
        config: the attacker's settings (:class:`ProbeConfig`).
        random_twin: ``True`` to also probe ``encoder.random_init_twin(config.random_twin_seed)``, ``False`` to
            skip, or an encoder to use as the baseline.
        cache_dir: folder for cached features (and built-in domains); ``None`` keeps features in memory only.
        output_dir: if given, ``probe_report.json``, ``.md`` and ``.png`` are written there.
    """
    config = config or ProbeConfig()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with torch_threads(config.num_threads):
        encoder = _load(encoder)
        poolings = resolve_poolings(encoder, config.poolings)
        resolved = load_domains(domains, config, cache_dir)
        feature_cache = Path(cache_dir) / "features" if cache_dir is not None else None
        encoders = [(ENCODER_ROLE, encoder)]
        twin_name = None
        if random_twin is not False and random_twin is not None:
            twin = encoder.random_init_twin(config.random_twin_seed) if random_twin is True else _load(random_twin)
            encoders.append((TWIN_ROLE, twin))
            twin_name = twin.name

        domain_info: dict[str, dict[str, Any]] = {}
        splits: dict[str, list[SeedSplit]] = {}
        encoder_keys: dict[str, tuple[str, ...]] = {}
        scores: list[ProbeScore] = []
        for role, model in encoders:
            for name, dataset in resolved.items():
                tick = time.perf_counter()
                extracted = {
                    split: extract_features(
                        model,
                        dataset[split],
                        poolings,
                        batch_size=config.batch_size,
                        cache_dir=feature_cache,
                        desc=f"{role} {name} {split}",
                        image_column=config.image_column,
                        label_column=config.label_column,
                        progress=config.progress,
                    )
                    for split in (config.train_split, config.test_split)
                }
                timings[f"extract/{role}/{name}"] = time.perf_counter() - tick
                train, test = extracted[config.train_split], extracted[config.test_split]
                if role == TWIN_ROLE and any(train.cache_key == key for key in encoder_keys.get(name, ())):
                    warnings.warn(
                        f"the random twin of {encoder.name!r} has the same weights as the encoder (a randomly "
                        f"initialised encoder built with seed {config.random_twin_seed}?): the no-encoder baseline "
                        "equals the encoder; set ProbeConfig.random_twin_seed to another seed",
                        stacklevel=2,
                    )
                if role == ENCODER_ROLE:
                    encoder_keys[name] = (train.cache_key,)
                if name not in splits:
                    splits[name] = split_training_rows(train.labels.numpy(), config.split_plan())
                    classes = _num_classes(dataset, config, [train.labels, test.labels])
                    domain_info[name] = {
                        "num_classes": classes,
                        "chance": float(np.bincount(test.labels.numpy(), minlength=classes).max() / max(len(test), 1)),
                        "n_train_split": len(train),
                        "n_test": len(test),
                    }
                tick = time.perf_counter()
                scores += probe_features(
                    train, test, splits[name], domain_info[name]["num_classes"], config, role, name
                )
                timings[f"heads/{role}/{name}"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    config_dict = asdict(config)
    config_dict["poolings"] = list(poolings)
    report = ProbeReport(
        encoder=getattr(encoder, "name", type(encoder).__name__),
        random_twin=twin_name,
        domains=domain_info,
        config=config_dict,
        scores=scores,
        timings=timings,
        versions=package_versions(),
    )
    if output_dir is not None:
        report.save(output_dir)
    return report
