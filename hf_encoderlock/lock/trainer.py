"""``EncoderLockTrainer``: the EncoderLock loop on ``transformers.Trainer``.

One Trainer optimiser step is one masked update of the encoder on a pair of batches (authorized + prohibited),
minimising the configured :mod:`objective <hf_encoderlock.lock.objectives>` through the current heads. A round
(self-challenge when due, weight selection, then ``update_steps_per_round`` updates) starts in
:meth:`EncoderLockTrainer.start_round`, called by :class:`~hf_encoderlock.lock.callbacks.LockRoundCallback`;
everything a run carries between steps is one :class:`~hf_encoderlock.lock.state.LockState`. The model handed to the
Trainer is the :class:`EncoderAdapter` itself, so the optimiser, DDP and mixed precision only ever see encoder
weights; heads live on the trainer.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from transformers import AutoModel, PreTrainedModel, Trainer, TrainerState
from transformers.trainer_utils import TrainOutput

from .._files import LOCK_CONFIG_FILE, LOCK_CONFIG_FORMAT, MASK_FILE, MODEL_CONFIG_FILE, TRAINER_STATE_FILE
from .._utils import atomic_folder, check_output_folder, package_versions
from ..data.lock_tensors import (
    DomainTensors,
    LockDataError,
    LockRows,
    PairedDomainCollator,
    PairedDomainDataset,
    as_lock_dataset,
    check_distinct_images,
    check_labelled_dataset,
    content_overlap,
    label_tensor,
    stratified_split,
)
from ..data.streamed import load_lock_domain
from ..encoders import NO_REMOTE_CODE, EncoderAdapter, EncoderError, load_encoder
from ..hub.card import write_model_card
from ..hub.public_names import is_hub_id, public_domain_record
from ..hub.push import DEFAULT_COMMIT_MESSAGE, push_locked_to_hub
from ..probing.heads import HeadTrainingConfig, best_head, head_accuracy, train_heads
from ..probing.transforms import TRANSFORMS, domain_stats, parse_transform_spec, with_transformed_copies
from .callbacks import LockRoundCallback
from .config import AUTO_POOLINGS, AUTO_PROJECTION, EncoderLockConfig, check_supported_settings
from .distributed import gather_batch
from .masking import MaskedParameterGuard, natural_range
from .objectives import LockHeads, LockObjective, ObjectiveTerms, build_objective
from .projection import AuthorizedProjection, layer_input_moments, supports_projection
from .selection import (
    accumulate_gradient_stats,
    block_index,
    compute_scores,
    mask_stats,
    merge_masks,
    select_candidate_parameters,
    select_top_weights,
    sum_across_processes,
    sync_gradient_stats,
    sync_mask_across_processes,
)
from .state import LockState, checkpoint_is_complete, checkpoint_problem, resumable_checkpoint
from .variants.augmentations import AugmentationConfig, augmented_view
from .variants.generators import generate_prohibited
from .variants.pseudo_labels import cluster_pseudo_labels

logger = logging.getLogger(__name__)
# Warn when the budget (num_rounds x weights_per_round) exceeds this share of the candidate weights: the lock is
# meant to change a sparse set of weights, and the default budget is below it on the default victim.
BUDGET_WARNING_SHARE = 0.05
# Warn when the authorized drift at the last update is this many times max_authorized_drift.
DRIFT_WARNING_FACTOR = 10.0

# encoderlock_config.json entries a resumed checkpoint must share with the run (with every hyperparameter)
RESUME_MUST_MATCH = ("variant", "objective", "base_model", "poolings", "authorized", "prohibited", "seed")
EVAL_KEYS = ("authorized", "prohibited")  # the keys of eval_dataset: which lock head scores each set
MIN_IMAGES_PER_DOMAIN = 8  # below this, a validation split carved from the lock data is meaningless
VIEW_SEED_OFFSET = 104_729  # augmented views draw from their own generator, seeded args.seed + this
# Below this share of the prohibited gradient's energy in the directions the projection leaves free, a projected lock
# barely moves. Measured at round 0 (before any update) on the 12 built-in pairs: 0.15-0.35 with grey mnist authorized
# (the projected lock removed 86-106% of the advantage), 0.00035-0.0033 with a colour domain authorized (at most 9%).
# authorized_projection='auto' drops the projection below it.
LOW_FREE_SHARE = 0.01
SCORE_SEED_STRIDE = 7919  # round r draws its score batches from a generator seeded args.seed + this * (r + 1)


def _lock_state_field(name: str, doc: str) -> property:
    """A read-only trainer property delegating to ``trainer.lock_state.<name>``."""
    return property(lambda trainer: getattr(trainer.lock_state, name), doc=doc)


def _sample_rows(data: LockRows, limit: int | None, seed: int) -> LockRows:
    """``data``, or a fixed seeded sample of ``limit`` of its rows (in their original order) when it holds more."""
    if limit is None or len(data) <= limit:
        return data
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit]
    return data.subset(torch.sort(chosen).values)


class NonFiniteWeightsError(FloatingPointError):
    """An encoder weight holds NaN or inf: nothing is saved (the message names the tensor)."""


def _first_non_finite(module: nn.Module) -> tuple[str, int] | None:
    """``(name, count)`` of the first floating-point parameter or buffer of ``module`` holding NaN or inf."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            return name.removeprefix("backbone."), int((~torch.isfinite(tensor.detach())).sum())
    return None


class NonFiniteLossError(FloatingPointError):
    """The lock loss became NaN or infinite; the message names the update step and the objective's logged terms."""


class EncoderLockTrainer(Trainer):
    """Lock an encoder: probing keeps working on the authorized domain and fails on the prohibited one.

    Args:
        model: the encoder to lock, wrapped here: a Hub id or folder, a ``PreTrainedModel`` vision backbone, any
            ``nn.Module`` from pixels to features (with ``processing_class``), or an :class:`EncoderAdapter`. Its
            weights change in place.
        args: an :class:`EncoderLockConfig` (``EncoderLockConfig()``, the tuned lock, when omitted).
        authorized_dataset / prohibited_dataset: ``datasets.Dataset`` (or a ``DatasetDict``, of which
            ``dataset_split`` is read) with image and label columns, named ``image`` / ``label`` or renamed by
            ``column_mapping`` (the lock's share of each domain; a validation part is carved from them,
            ``validation_fraction``). With
            ``variant="unsupervised"`` only the prohibited ``image`` column is read; with ``variant="zero-shot"``
            ``prohibited_dataset`` is ``None`` (synthetic data from ``args.zero_shot_generators``) or a synthetic
            dataset of the caller's.
        authorized_name / prohibited_name: names recorded in reports and ``encoderlock_config.json``.
        eval_dataset: optional ``{"authorized": ds, "prohibited": ds}`` reported by :meth:`evaluate`.
        objective: override the objective built from ``args.objective``.
        processing_class: the image processor for a backbone that has none saved, or a function from a list of PIL
            images to a pixel tensor (for a plain ``nn.Module``).
        column_mapping: ``{"your_image_column": "image", "your_label_column": "label"}`` for every dataset given.
        dataset_split: the split read from a ``DatasetDict``.
        allow_local_images_under: a folder whose image files an ``image`` column of file paths may name (refused
            otherwise, and URLs always are: a dataset must not make the machine read or fetch anything else).
    """

    loss_is_scaled_for_ga = False

    # Read access to the lock state under the names the rest of the package and its users know.
    mask = _lock_state_field("mask", "The OR-accumulated mask of selected weight entries (parameter name -> bool).")
    rounds_completed_in_mask = _lock_state_field("rounds_completed", "Rounds whose selection is in :attr:`mask`.")
    heads = _lock_state_field("heads", "The heads the updates train against (:class:`LockHeads`, or ``None``).")
    stale_heads = _lock_state_field("stale_heads", "After the best encoder was restored: the heads it trained against.")
    best_round = _lock_state_field("best_round", "The round of the kept encoder (``best_model_criterion='gap'``).")
    best_gap = _lock_state_field("best_gap", "The kept encoder's validation gap (authorized - prohibited accuracy).")
    history = _lock_state_field("history", "Per-round figures, in the order they were recorded.")

    def __init__(
        self,
        model: str | nn.Module | EncoderAdapter,
        args: EncoderLockConfig | None = None,
        authorized_dataset: Any = None,
        prohibited_dataset: Any = None,
        authorized_name: str = "authorized",
        prohibited_name: str = "prohibited",
        eval_dataset: dict[str, Any] | None = None,
        objective: LockObjective | None = None,
        callbacks: Sequence[Any] | None = None,
        domain_specs: dict[str, Any] | None = None,
        processing_class: Any | None = None,
        column_mapping: Mapping[str, str] | None = None,
        dataset_split: str = "train",
        allow_local_images_under: str | os.PathLike | None = None,
    ) -> None:
        args = EncoderLockConfig() if args is None else args
        if not isinstance(args, EncoderLockConfig):
            raise TypeError(f"args must be an EncoderLockConfig, got {type(args).__name__}")
        check_supported_settings(args)  # fail before any work
        if authorized_dataset is None:
            raise LockDataError("authorized_dataset is required: the images whose probing must keep working")
        encoder = load_encoder(model, image_processor=processing_class)
        broken = _first_non_finite(encoder)
        if broken is not None:  # else it surfaces as a failed factorisation or a NaN loss, far from its cause
            raise NonFiniteWeightsError(
                f"encoder tensor {broken[0]} holds {broken[1]} NaN/inf value(s) before the lock: load an intact "
                "checkpoint of the encoder"
            )
        source = getattr(getattr(encoder.backbone, "config", None), "_name_or_path", "") or ""
        self._sources = [model if isinstance(model, (str, os.PathLike)) else None, source]
        if args.should_save:  # a folder that cannot be written, holds a user's files or the source: before any work
            check_output_folder(
                args.output_dir, LOCK_CONFIG_FILE, args.overwrite_output_dir, "EncoderLockTrainer", self._sources
            )
        if is_hub_id(source):
            logger.warning(
                "The encoder was loaded from the Hub repository %s. If that repository is public, locking protects "
                "nothing: anyone can download its unlocked weights. Lock an encoder whose weights are not published; "
                "the card does not name %s unless you pass base_model= when pushing.",
                source,
                source,
            )
        if encoder.image_processor is None and encoder.preprocess_fn is None:
            raise EncoderError(
                f"{encoder.name} has no image processor: pass processing_class= (an image processor such as "
                "AutoImageProcessor.from_pretrained(...), or a function from a list of PIL images to a pixel tensor)"
            )
        if args.push_to_hub and not isinstance(encoder.backbone, PreTrainedModel):
            # found on the user's path: the first pushed checkpoint failed, after the lock had run, on a missing
            # config.json; a Hub copy must load with AutoModel, which a plain module's folder cannot
            raise EncoderError(
                f"push_to_hub=True needs a transformers PreTrainedModel backbone, got a plain "
                f"{type(encoder.backbone).__name__}: its locked folder (weights + encoderlock_module.json) does not "
                "load with AutoModel, so it cannot be published. Lock with push_to_hub=False and save_model() locally."
            )
        self.column_mapping, self.dataset_split = dict(column_mapping or {}), dataset_split
        self.allow_local_images_under = allow_local_images_under
        authorized_dataset = self._as_lock_data(authorized_dataset, authorized_name)
        if prohibited_dataset is not None:
            prohibited_dataset = self._as_lock_data(prohibited_dataset, prohibited_name)
            if args.variant == "supervised":  # its labels, before the authorized images are decoded
                check_labelled_dataset(prohibited_dataset, prohibited_name)
        if eval_dataset is not None and isinstance(eval_dataset, dict):
            eval_dataset = {key: self._as_eval_dataset(key, value) for key, value in eval_dataset.items()}
        self.encoder = encoder
        # Normalisation layers that keep running statistics (BatchNorm): the lock runs them as deployed, on their
        # statistics, which it never updates; otherwise every forward in train mode would change buffers outside the
        # mask, and the saved encoder would not be "the original but for the masked weights".
        self._statistics_modules = [
            module
            for module in encoder.modules()
            if getattr(module, "track_running_stats", False) and getattr(module, "running_mean", None) is not None
        ]
        self.objective = objective or build_objective(args)
        self.prohibited_poolings = self._resolve_prohibited_poolings(args.prohibited_poolings)
        self.authorized_name, self.prohibited_name = authorized_name, prohibited_name
        self.domain_specs = domain_specs or {}
        self.zero_shot_source: list[str] | None = None
        self.pseudo_labelled = False
        authorized = load_lock_domain(
            encoder, authorized_dataset, authorized_name, True, args.lock_cache_bytes, not args.disable_tqdm
        )
        self._check_domain_size(authorized)
        prohibited = self._prohibited_tensors(args, authorized_dataset, prohibited_dataset, prohibited_name)
        self._check_domains(authorized, prohibited)
        self.lock_authorized, self.val_authorized = stratified_split(authorized, args.validation_fraction, args.seed)
        self.lock_prohibited, self.val_prohibited = stratified_split(prohibited, args.validation_fraction, args.seed)
        # What each self-challenge encodes: every image, or a fixed seeded sample of at most challenge_max_images
        self.challenge_sets = {
            key: _sample_rows(data, args.challenge_max_images, args.seed + offset)
            for offset, (key, data) in enumerate(
                (
                    ("lock_authorized", self.lock_authorized),
                    ("val_authorized", self.val_authorized),
                    ("lock_prohibited", self.lock_prohibited),
                    ("val_prohibited", self.val_prohibited),
                )
            )
        }
        self._check_eval_datasets(eval_dataset)
        self.candidates = {f"backbone.{name}": param for name, param in self._candidate_weights(args).items()}
        # Per entry, the range a bounded update keeps it in: its tensor's natural range, widened to the entry's own
        # unlocked value, so a natural outlier that gets selected is not pulled in (a lock that erased the tensor's
        # outliers would be a tell too). From the unlocked weights: derived, so recomputed on resume.
        self.weight_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if args.weight_bound is not None:
            for name, param in self.candidates.items():
                low, high = natural_range(param.detach(), args.weight_bound)
                original = param.detach()
                self.weight_ranges[name] = (original.clamp(max=low), original.clamp(min=high))
        self._check_budget(args)
        for name, param in encoder.named_parameters():  # the optimiser holds candidate weights only
            param.requires_grad_(name in self.candidates)
        if args.projection_threshold() is None and args.learning_rate > args.unprojected_learning_rate:
            # the default rate is tuned for projected updates; unprojected ones at that rate wreck the authorized
            # domain (measured: 84.5% kept on test at 0.3 even with the projection's leaks only)
            logger.warning(
                "authorized_projection is off, and every update moves the authorized features too, but learning_rate "
                "is %g: unprojected locks were measured at %g (unprojected_learning_rate); set --learning_rate %g "
                "unless you mean it (docs/DEFAULT_LOCK.md)",
                args.learning_rate,
                args.unprojected_learning_rate,
                args.unprojected_learning_rate,
            )
        keeps_unlocked_copy = self.objective.uses_reference_features or args.projection_threshold() is not None
        self.reference_encoder = copy.deepcopy(encoder).eval().requires_grad_(False) if keeps_unlocked_copy else None
        self.projection: AuthorizedProjection | None = None  # built at the first round (authorized_projection)
        self._weights_before_step: dict[str, torch.Tensor] = {}
        self._last_free_share = 1.0  # share of the prohibited gradient's energy the projection let through (last round)
        # the scheduler's rates, while a repair, guarded or unprojected step runs at its own
        self._scheduled_lrs: list[float] | None = None
        self.augmentation = AugmentationConfig.from_lock_config(args)
        self._normalization = encoder.normalization()
        self._view_generator = torch.Generator().manual_seed(args.seed + VIEW_SEED_OFFSET)
        self.lock_state = LockState()
        # The unlocked encoder's features per lock image, filled block by block as rows are first met
        self._reference_cache: torch.Tensor | None = None
        self._reference_known: torch.Tensor | None = None
        self.guard: MaskedParameterGuard | None = None  # installed for the length of train()
        if args.finetune_aware_steps and args.world_size > 1:
            raise NotImplementedError("finetune_aware_steps is single-process: its simulated steps bypass DDP")
        self._saving_checkpoint = False
        self._saved_to: set[Path] = {Path(args.output_dir).resolve()}  # checked above, at construction
        self.prohibited_batch_factor = self._usable_prohibited_batch_factor(args)
        # each of world_size processes reads its own share of the pairs (found on the user's path: a 2-process main
        # job whose shares were each below one batch dropped every batch, made no update, and reported success)
        pairs = max(len(self.lock_authorized), len(self.lock_prohibited))
        if pairs < args.per_device_train_batch_size * args.world_size:
            args.dataloader_drop_last = False  # less than one batch: dropping it would leave nothing to train on
        super().__init__(
            model=encoder,
            args=args,
            train_dataset=PairedDomainDataset(self.lock_authorized, self.lock_prohibited, seed=args.seed),
            data_collator=PairedDomainCollator(
                self.lock_authorized, self.lock_prohibited, prohibited_per_authorized=self.prohibited_batch_factor
            ),
            eval_dataset=eval_dataset,
            callbacks=list(callbacks or []),
        )
        # a batch is k x per_device_train_batch_size pairs, of which the collator keeps k x prohibited, 1 x authorized
        self._train_batch_size = self.prohibited_batch_factor * args.train_batch_size
        self.add_callback(LockRoundCallback(self))

    # ------------------------------------------------------------------------------------ prohibited side
    def _prohibited_tensors(
        self, args: EncoderLockConfig, authorized_dataset, prohibited_dataset, name: str
    ) -> LockRows:
        """The prohibited lock data of the variant: labelled (supervised), images only with pseudo-labels
        (unsupervised), or synthetic (zero-shot: generated from the authorized data unless a dataset is given)."""
        if args.variant == "zero-shot":
            if prohibited_dataset is None:
                prohibited_dataset = generate_prohibited(
                    args.zero_shot_generators, authorized_dataset, args.zero_shot_images, args.seed
                )
                self.zero_shot_source = list(args.zero_shot_generators)
            else:
                self.zero_shot_source = ["user-supplied"]
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
                    f"domain {name!r}: no 'image' column (columns: {columns}); name yours with "
                    "column_mapping={'your_column': 'image'}"
                )
            prohibited_dataset = prohibited_dataset.select_columns(["image"])  # prohibited labels are never read
        if args.prohibited_transforms:
            prohibited_dataset = self._with_attacker_views(args, authorized_dataset, prohibited_dataset)
        data = load_lock_domain(
            self.encoder, prohibited_dataset, name, labelled, args.lock_cache_bytes, not args.disable_tqdm
        )
        self._check_domain_size(data)  # before pseudo-labels: k-means of copies of one image is meaningless
        if data.labels is None:
            data = self._with_pseudo_labels(args, data)
        return data

    @staticmethod
    def _with_attacker_views(args: EncoderLockConfig, authorized_dataset, prohibited_dataset):
        """The prohibited lock images plus one copy per ``prohibited_transforms`` entry: the inputs an attacker who
        knows the method shows the encoder (the adaptive suite's transforms, one implementation for both sides).
        Reference statistics for the ``match_*`` transforms come from the authorized images, as the attacker's do."""
        names = [parse_transform_spec(spec)[0] for spec in args.prohibited_transforms]
        needs_reference = any(TRANSFORMS[name].needs_reference for name in names)
        reference = domain_stats(authorized_dataset, seed=args.seed) if needs_reference else None
        return with_transformed_copies(prohibited_dataset, args.prohibited_transforms, reference, args.seed)

    def _check_budget(self, args: EncoderLockConfig) -> None:
        """``weights_per_round`` must fit in the ``layers_per_round`` largest candidate tensors, and the whole budget
        in the candidates: otherwise selection would silently take whole layers or run out of weights."""
        sizes = sorted((param.numel() for param in self.candidates.values()), reverse=True)
        per_round = sum(sizes[: args.layers_per_round])
        if args.weights_per_round > per_round:
            raise ValueError(
                f"weights_per_round={args.weights_per_round} exceeds the {per_round} entries of the "
                f"{args.layers_per_round} largest candidate layer(s) (layers_per_round): lower it or raise "
                "layers_per_round"
            )
        budget = args.weights_per_round * args.num_rounds
        if budget > sum(sizes):
            raise ValueError(
                f"num_rounds x weights_per_round = {budget} exceeds the "
                f"{sum(sizes)} candidate weights (candidate_blocks={args.candidate_blocks}); lower the budget"
            )
        if budget > BUDGET_WARNING_SHARE * sum(sizes):
            # the budget is absolute: sized for the default victim, it rewrites much of a small encoder's layers
            logger.warning(
                "num_rounds x weights_per_round = %d is %.0f%% of the %d candidate weights (candidate_blocks=%s): "
                "the lock will change a large share of those layers, not a sparse set of weights. The defaults are "
                "sized for the built-in victim; for this encoder consider weights_per_round=%d (%.0f%% of them).",
                budget,
                100 * budget / sum(sizes),
                sum(sizes),
                args.candidate_blocks,
                max(1, int(BUDGET_WARNING_SHARE * sum(sizes) / (2 * args.num_rounds))),
                100 * BUDGET_WARNING_SHARE / 2,
            )

    def _usable_prohibited_batch_factor(self, args: EncoderLockConfig) -> int:
        """``prohibited_batch_factor``, lowered (with a warning) until a batch of that many pairs per authorized
        image fits in one pass over the lock data (pairs: as many as the longer domain has images, shared among the
        processes)."""
        pairs, batch = max(len(self.lock_authorized), len(self.lock_prohibited)), args.per_device_train_batch_size
        usable = max(1, min(args.prohibited_batch_factor, pairs // (batch * args.world_size)))
        if usable < args.prohibited_batch_factor:
            logger.warning(
                "prohibited_batch_factor %d needs %d prohibited lock images per batch on each of %d process(es), but "
                "the lock data hold %d pairs; using %d",
                args.prohibited_batch_factor,
                args.prohibited_batch_factor * batch,
                args.world_size,
                pairs,
                usable,
            )
        return usable

    def _candidate_weights(self, args: EncoderLockConfig) -> dict[str, nn.Parameter]:
        """The weights selection may choose from. ``candidate_blocks`` names transformer blocks / stages; a model
        without any (a plain module's layers have no block numbers) takes every candidate weight instead, with a
        warning, so the default config works for it too."""
        backbone = self.encoder.backbone
        choose = dict(module_types=tuple(args.candidate_module_types), name_patterns=args.candidate_name_patterns)
        try:
            return select_candidate_parameters(backbone, block_indices=args.candidate_blocks, **choose)
        except ValueError:
            has_blocks = any(block_index(name) is not None for name, _ in backbone.named_parameters())
            if args.candidate_blocks is None or has_blocks:
                raise
        logger.warning(
            "%s has no numbered blocks or stages: candidate_blocks=%s is ignored and every %s weight is a candidate",
            self.encoder.name,
            args.candidate_blocks,
            "/".join(args.candidate_module_types),
        )
        return select_candidate_parameters(backbone, block_indices=None, **choose)

    def _resolve_prohibited_poolings(self, requested: list[str] | None) -> list[str] | None:
        """The poolings whose prohibited features the objective sees (``None``: the encoder's default pooling).
        ``["auto"]``: every pooling the encoder offers when the objective combines poolings, since a probe may
        attack any of them."""
        if requested == [AUTO_POOLINGS]:
            offered = list(self.encoder.available_poolings())
            return offered if self.objective.combines_poolings and len(offered) > 1 else None
        if requested and not self.objective.combines_poolings:
            raise ValueError(f"prohibited_poolings={requested}: the {self.objective.name!r} objective uses one pooling")
        return list(requested) if requested else None

    @staticmethod
    def _concat_poolings(pooled: dict[str, torch.Tensor], poolings) -> torch.Tensor:
        """The prohibited view: features of ``poolings`` concatenated, in order."""
        return torch.cat([pooled[p] for p in poolings], dim=1)

    def _with_pseudo_labels(self, args: EncoderLockConfig, data: LockRows) -> LockRows:
        """Cluster the unlocked encoder's features of unlabelled prohibited images (the poolings the objective sees)."""
        poolings = [*(self.prohibited_poolings or [self.encoder.pooling])]
        device, was_training = args.device, self.encoder.training
        self.encoder.to(device).eval()
        with torch.no_grad():
            features = torch.cat(
                [
                    self._concat_poolings(self.encoder.pooled_features(chunk.to(device), poolings), poolings)
                    .float()
                    .cpu()
                    for chunk in data.pixel_chunks(args.per_device_train_batch_size)
                ]
            )
        self.encoder.train(was_training)
        labels = cluster_pseudo_labels(features, args.num_pseudo_classes, args.seed, args.pseudo_label_restarts)
        self.pseudo_labelled = True
        return replace(data, labels=labels, num_classes=args.num_pseudo_classes)

    # ----------------------------------------------------------------------------------------------- checks
    def _check_domains(self, authorized: LockRows, prohibited: LockRows) -> None:
        if authorized.pixel_shape != prohibited.pixel_shape:
            raise LockDataError(
                f"authorized and prohibited images preprocess to different shapes ({authorized.pixel_shape} and "
                f"{prohibited.pixel_shape})"
            )
        content_overlap(authorized, prohibited)  # the same images, in any order, are refused by content hash

    @staticmethod
    def _check_domain_size(data: LockRows) -> None:
        """Enough images, and enough distinct ones (copies of one image give no gradient to lock with)."""
        if len(data) < MIN_IMAGES_PER_DOMAIN:
            raise LockDataError(f"domain {data.name!r}: {len(data)} images, at least {MIN_IMAGES_PER_DOMAIN} needed")
        check_distinct_images(data, MIN_IMAGES_PER_DOMAIN)

    def _as_eval_dataset(self, key: str, dataset: Any) -> Any:
        """An evaluation set read like the lock data (column mapping, split of a ``DatasetDict``)."""
        return self._as_lock_data(dataset, f"eval_dataset[{key!r}]")

    def _as_lock_data(self, dataset: Any, name: str) -> Any:
        """A dataset read the way every lock dataset is (column mapping, split, local image files only if allowed)."""
        return as_lock_dataset(
            dataset,
            name,
            self.column_mapping,
            self.dataset_split,
            allow_local_images_under=self.allow_local_images_under,
        )

    def _check_eval_datasets(self, datasets: dict[str, Any] | None) -> None:
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

    # ------------------------------------------------------------------------------------------------ loss
    def _lock_features(self, model, pixel_values: torch.Tensor, num_authorized: int):
        """(authorized features, prohibited features) from ONE forward pass of ``model`` (DDP sees one forward); with
        ``prohibited_poolings`` the prohibited features are those poolings concatenated (the authorized ones stay in
        the default pooling)."""
        poolings = self.prohibited_poolings
        if not poolings:
            return model(pixel_values).split([num_authorized, len(pixel_values) - num_authorized])
        pooled = model(pixel_values, poolings=[self.encoder.pooling, *poolings])
        a_features = pooled[self.encoder.pooling][:num_authorized]
        p_features = self._concat_poolings({p: pooled[p][num_authorized:] for p in poolings}, poolings)
        return a_features, p_features

    def objective_terms(
        self, model, a_pixels, a_labels, p_pixels, p_labels, finetune_aware: bool = False, a_index=None
    ) -> ObjectiveTerms:
        """The objective on one pair of batches through the current heads, from one forward pass of ``model``.

        Objectives with ``uses_views`` also get the features of an augmented view of each batch (in the same
        pass), those with ``uses_reference_features`` the unlocked encoder's features of the authorized batch. With
        ``ddp_global_batch`` under several processes, the objective sees the global batch gathered from every rank
        (differentiably, see :func:`~hf_encoderlock.lock.distributed.gather_batch`). ``finetune_aware`` adds the
        objective after simulated attacker fine-tuning (``finetune_aware_steps``; single-process). ``a_index`` (the
        authorized batch's rows in the lock data) reads the unlocked encoder's features from the per-image cache
        instead of running the frozen copy again.
        """
        for module in self._statistics_modules:  # the Trainer puts the model in train mode before every step
            module.eval()
        n_a, extra = len(a_pixels), {}
        if self.objective.uses_views:
            views = augmented_view(
                torch.cat([a_pixels, p_pixels]), *self._normalization, self.augmentation, self._view_generator
            )
            both = torch.cat([a_pixels, views[:n_a], p_pixels, views[n_a:]])
            a_both, p_both = self._lock_features(model, both, 2 * n_a)
            (a_features, a_views), (p_features, p_views) = a_both.split(n_a), p_both.chunk(2)
            extra.update(authorized_views=a_views, prohibited_views=p_views)
        else:
            a_features, p_features = self._lock_features(model, torch.cat([a_pixels, p_pixels]), n_a)
        if self.reference_encoder is not None:
            extra["authorized_reference"] = self._reference_features(a_pixels, a_index)
        if self.args.ddp_global_batch and self.args.world_size > 1:
            a_features, a_labels, p_features, p_labels = map(gather_batch, (a_features, a_labels, p_features, p_labels))
            extra = {key: gather_batch(value) for key, value in extra.items()}
        terms = self.objective.terms(a_features, a_labels, p_features, p_labels, self.heads, **extra)
        if finetune_aware:  # single-process: the inputs above are this process's own batch
            reference = {k: v for k, v in extra.items() if k == "authorized_reference"}
            after = self._terms_after_simulated_finetuning(a_features.detach(), a_labels, p_pixels, p_labels, reference)
            terms.total = terms.total + self.args.finetune_aware_weight * after.total
            terms.logs["finetune_aware_total"] = float(after.total.detach())
        return terms

    def _reference_features(self, a_pixels: torch.Tensor, a_index: torch.Tensor | None) -> torch.Tensor:
        """The unlocked encoder's features of an authorized batch. They never change, so during training they are
        computed once per lock image and read by row, instead of one forward pass of the frozen copy per update step.
        Rows are computed in fixed blocks of ``per_device_train_batch_size`` lock images, each the first time a batch
        needs one of its rows: the same blocks whatever the batch order, so a resumed run or another DDP rank gets
        bit-identical features, and streamed data is decoded at most once more. Batches without rows (selection)
        run the frozen copy."""
        self.reference_encoder.to(a_pixels.device)
        if a_index is None:
            with torch.no_grad():
                return self.reference_encoder(a_pixels)
        block, count, device = self.args.per_device_train_batch_size, len(self.lock_authorized), a_pixels.device
        if self._reference_known is None or self._reference_known.device != device:
            self._reference_known = torch.zeros(-(-count // block), dtype=torch.bool, device=device)
            self._reference_cache = None
        a_index = a_index.to(device)
        for start in (torch.unique(a_index // block) * block).tolist():
            if bool(self._reference_known[start // block]):
                continue
            rows, started = torch.arange(start, min(start + block, count)), time.perf_counter()
            with torch.no_grad():
                fresh = self.reference_encoder(self.lock_authorized.take(rows).pixel_values.to(device))
            self.lock_state.phase_time["reference"] += time.perf_counter() - started
            if self._reference_cache is None:
                self._reference_cache = torch.zeros((count, *fresh.shape[1:]), dtype=fresh.dtype, device=device)
            self._reference_cache[start : start + len(rows)] = fresh
            self._reference_known[start // block] = True
        return self._reference_cache[a_index]

    @property
    def repairing(self) -> bool:
        """Whether the update being computed is one of the ``repair_steps`` after the last round. Not when 'auto'
        dropped the projection: unprojected, the lock's cost to the authorized domain lies along what it removed, and
        a repair takes both back (measured on ``mnist-m`` -> ``mnist``: 3.4% of the advantage left removed,
        docs/DEFAULT_LOCK.md "When the projection leaves no room"), so those steps continue the lock on the last
        round's mask instead."""
        return self.state.global_step >= self.args.lock_steps and not self.lock_state.projection_dropped

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        repairing = self.repairing
        terms = self.objective_terms(
            model,
            inputs["authorized_pixel_values"],
            inputs["authorized_labels"],
            inputs["prohibited_pixel_values"],
            inputs.get("prohibited_labels"),
            finetune_aware=bool(self.args.finetune_aware_steps) and not repairing,
            a_index=inputs.get("authorized_index"),
        )
        if repairing:  # the authorized side alone; the prohibited terms are still computed for the logs
            terms.total = terms.authorized
            terms.logs["repair_learning_rate"] = self.args.repair_learning_rate  # the Trainer logs the scheduler's
        self.lock_state.last_logs = terms.logs
        if not bool(torch.isfinite(terms.total.detach()).all()):
            self._stop_on_non_finite(terms)
        return (terms.total, terms) if return_outputs else terms.total

    def _stop_on_non_finite(self, terms) -> None:
        """Raise :class:`NonFiniteLossError` before the bad loss reaches backward (no update, no save)."""
        step = self.state.global_step + 1  # the update being computed; checkpoint-N holds the state after step N
        logged = ", ".join(f"{name}={value:.6g}" for name, value in terms.logs.items()) or "none logged"
        raise NonFiniteLossError(
            f"the lock loss is {float(terms.total.detach())} at update step {step} of {self.args.max_steps} "
            f"(round {self.state.global_step // self.args.update_steps_per_round}); objective "
            f"{self.objective.name!r} terms: {logged}. The run stopped before this update; nothing was saved for it. "
            "Lower learning_rate, check the lock data, or raise objective_eps."
        )

    def _simulated_attacker_weights(self, p_pixels: torch.Tensor, p_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder weights after ``finetune_aware_steps`` simulated steps of an attacker fine-tuning every weight
        with the adversary head on the prohibited batch. Each step is what Adam's first step would be,
        ``-finetune_aware_lr * sign(gradient)`` (an attacker's Adam moves every weight by about its learning rate).
        Candidate weights stay differentiable (the steps are constants added to them: first-order, as SOPHON); the
        others are detached."""
        weights = {
            name: param if param.requires_grad else param.detach().requires_grad_(True)
            for name, param in self.encoder.named_parameters()
        }
        for _ in range(self.args.finetune_aware_steps):
            with torch.enable_grad():
                features = functional_call(self.encoder, weights, (p_pixels,))
                attack_loss = F.cross_entropy(self.heads.adversary(features), p_labels)
                grads = torch.autograd.grad(attack_loss, list(weights.values()), allow_unused=True)
            weights = {
                name: value if grad is None else value - self.args.finetune_aware_lr * grad.detach().sign()
                for (name, value), grad in zip(weights.items(), grads)
            }
        return weights

    def _terms_after_simulated_finetuning(self, a_features, a_labels, p_pixels, p_labels, reference_kwargs):
        """The objective with the prohibited features of the encoder after simulated attacker fine-tuning (the
        authorized features, given without gradient, and ``reference_kwargs`` come from the main pass)."""
        if p_labels is None:
            raise ValueError("finetune_aware_steps needs prohibited labels or pseudo-labels")
        weights = self._simulated_attacker_weights(p_pixels, p_labels)
        poolings = self.prohibited_poolings
        if poolings:
            pooled = functional_call(self.encoder, weights, (p_pixels,), {"poolings": list(poolings)})
            p_features = self._concat_poolings(pooled, poolings)
        else:
            p_features = functional_call(self.encoder, weights, (p_pixels,))
        return self.objective.terms(a_features, a_labels, p_features, p_labels, self.heads, **reference_kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        started, reference = time.perf_counter(), self.lock_state.phase_time["reference"]
        loss = super().training_step(model, inputs, num_items_in_batch)
        # reference features computed inside this step are their own phase (a one-time cost per block of images)
        reference_time = self.lock_state.phase_time["reference"] - reference
        self.lock_state.phase_time["update"] += time.perf_counter() - started - reference_time
        return loss

    # --------------------------------------------------------------------------------------------- rounds
    def begin_lock(self, global_step: int) -> None:
        """At the start of ``train()``: heads to train against, then the guard of the mask over the encoder.

        A fresh run challenges the unlocked encoder here (round 0's challenge); a resumed one has its heads from
        the checkpoint, or, from one without them, refits them in the round it resumes in (mid-round too).
        """
        if self.heads is None:
            self.challenge(round_index=global_step // self.args.update_steps_per_round)
        # DDP's reducer waits for every parameter it was built with: nothing may be frozen under it.
        self.guard = MaskedParameterGuard(
            self.encoder, freeze_unselected=self.args.parallel_mode.value != "distributed"
        )
        self._install_mask()
        missing = [n for n in self.candidates if n in self.guard.missing_from(self.optimizer)]
        if missing:
            raise RuntimeError(f"candidate weights missing from the optimizer: {missing[:5]}")

    def start_round(self, round_index: int) -> None:
        """Start round ``round_index`` (at its first update step): the self-challenge when due, so that selection
        scores weights against the freshest adversary; then weight selection, unless the round's selection is
        already in the mask (a run resumed at a round start). Past the last round, the repair steps select nothing."""
        if round_index >= self.args.num_rounds:
            if self.lock_state.projection_dropped:  # no repair: the steps continue the lock (see ``repairing``)
                self._show_phase(round_index, "updates")
                return
            if round_index == self.args.num_rounds:
                # The optimiser's moments hold the lock's gradients, which were only ever applied projected: carried
                # into unprojected repair steps they would move the authorized features (measured: drift 1.6).
                self.optimizer.state.clear()
            self._show_phase(round_index, "repair")
            return
        if self._challenge_due(round_index):
            self._show_phase(round_index, "challenge")
            self.challenge(round_index=round_index)
        if round_index < self.lock_state.rounds_completed:
            self._show_phase(round_index, "updates")
            return
        self._show_phase(round_index, "selection")
        started = time.perf_counter()
        new = self._select_weights(round_index)
        free_share = None if self.projection is None else self._last_free_share
        if free_share is not None and round_index == 0 and free_share < LOW_FREE_SHARE:
            self._on_low_free_share(free_share)
            if self.lock_state.projection_dropped:
                new = self._select_weights(round_index)  # scored by the whole gradient, as the updates now move
        self.lock_state.mask = merge_masks(self.mask, new)
        self._install_mask()
        self.lock_state.rounds_completed = round_index + 1
        stats = mask_stats(self.mask, self.encoder)
        self.record_round(
            {
                "round": round_index,
                "mask_size": stats["count"],
                "mask_fraction": stats["fraction_of_parameters"],
                "time_selection_s": time.perf_counter() - started,
                **({} if free_share is None else {"projection_free_share": free_share}),
                **({"projection_dropped": True} if round_index == 0 and self.lock_state.projection_dropped else {}),
            }
        )
        self._show_phase(round_index, "updates")

    def _on_low_free_share(self, free_share: float) -> None:
        """At the first round, when the projection leaves the prohibited gradient next to no room: with
        ``authorized_projection='auto'``, drop it for the rest of the run (recorded in the lock state, so a resumed
        run keeps the decision); with a threshold the user chose, warn."""
        why = (
            f"only {100 * free_share:.2g}% of the prohibited objective's gradient lies in directions the authorized "
            "inputs leave free: the two domains use the same input directions of the candidate layers, and a "
            "projected lock would remove next to nothing (built-in colour authorized domains: 0-9% of the advantage)"
        )
        if self.args.authorized_projection != AUTO_PROJECTION:
            logger.warning(
                "authorized_projection: %s. Consider authorized_projection='auto', which then runs unprojected "
                "(docs/RESULTS.md, 'Every domain pair').",
                why,
            )
            return
        logger.warning(
            "authorized_projection='auto': %s. The lock runs unprojected at unprojected_learning_rate=%g instead "
            "(any repair steps continue it); expect it to cost the authorized domain more (docs/RESULTS.md, 'Every "
            "domain pair').",
            why,
            self.args.unprojected_learning_rate,
        )
        self.projection = None
        self.lock_state.projection_dropped = True

    def _install_mask(self) -> None:
        """Install the mask in the guard and, with ``authorized_projection``, build its rows' projectors (the
        unlocked encoder's authorized input moments are computed at the first call, booked as ``reference``)."""
        self.guard.install(self.mask)
        if self.args.projection_threshold() is None or self.lock_state.projection_dropped:
            return
        if self.projection is None:
            started, device = time.perf_counter(), self.args.device
            self.reference_encoder.to(device)
            chunks = self.challenge_sets["lock_authorized"].pixel_chunks(self.args.per_device_eval_batch_size)
            projected = [name for name in self.candidates if supports_projection(self.reference_encoder, name)]
            if len(projected) < len(self.candidates):
                logger.warning(
                    "authorized_projection: %d candidate weight(s) are not Linear or ungrouped, zero-padded Conv2d "
                    "weights; their updates are not projected (e.g. %s)",
                    len(self.candidates) - len(projected),
                    next(name for name in self.candidates if name not in projected),
                )
            moments = layer_input_moments(self.reference_encoder, projected, (chunk.to(device) for chunk in chunks))
            self.projection = AuthorizedProjection(moments, self.args.projection_threshold())
            self.lock_state.phase_time["reference"] += time.perf_counter() - started
        self.projection.prepare(self.mask)

    def _projects_this_step(self) -> bool:
        # Repair steps are not projected: an authorized loss's gradient lies in the span of the authorized inputs,
        # which is exactly what the projection removes.
        return self.projection is not None and not self.repairing

    def before_optimizer_step(self) -> None:
        """Before each optimiser step: mask the gradients; with a projection, keep the masked weights' values; in a
        repair step, the optimiser at ``repair_learning_rate``; past ``max_authorized_drift``, at a scaled-down
        rate (the drift guard)."""
        self.guard.mask_gradients()
        if self._projects_this_step():
            self._weights_before_step = {name: self.candidates[name].detach().clone() for name in self.projection.names}
        self._scheduled_lrs = None
        if self.repairing:
            self._set_step_learning_rates(lambda _: self.args.repair_learning_rate)
            return
        scale = 1.0
        if self.lock_state.projection_dropped:  # as a factor, so that a user's scheduler still shapes the rate
            scale = self.args.unprojected_learning_rate / self.args.learning_rate
        drift = self.lock_state.last_logs.get("authorized_drift")  # None: the objective measures no drift
        if self.args.max_authorized_drift > 0 and drift is not None and self._projects_this_step():
            # The drift is this step's, measured before its update. A projected lock cannot pull the features back
            # (the preservation term's gradient is what the projection removes), so drift only grows, and at high
            # learning rates it compounds (measured: 0.01 to 1.37 over six rounds); smaller steps stop the growth.
            # Unprojected updates are left alone: the preservation term pulls their drift back.
            guard = min(1.0, self.args.max_authorized_drift / drift) if drift > 0 else 1.0
            self.lock_state.last_logs["drift_guard_scale"] = guard
            scale *= guard
        if scale != 1.0:
            self._set_step_learning_rates(lambda lr: lr * scale)

    def _set_step_learning_rates(self, rate: Callable[[float], float]) -> None:
        """Run this optimiser step at ``rate(scheduled_lr)`` in every group; :meth:`after_optimizer_step` puts the
        scheduler's rates back."""
        self._scheduled_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = rate(group["lr"])

    def after_optimizer_step(self) -> None:
        """After each optimiser step: unselected entries back; with a projection, the update projected; the
        scheduler's learning rate back after a repair step."""
        self.guard.restore_unselected()
        if self._projects_this_step():
            self.projection.project(self.candidates, self._weights_before_step)
        if self.weight_ranges:  # last: whatever moved a weight, it ends inside its tensor's natural range
            with torch.no_grad():
                for name, selected in self.mask.items():
                    if name in self.weight_ranges:
                        low, high = self.weight_ranges[name]
                        param = self.candidates[name]
                        bounded = torch.minimum(torch.maximum(param, low.to(param.device)), high.to(param.device))
                        param.copy_(torch.where(selected.to(param.device), bounded, param))
        if self._scheduled_lrs is not None:
            for group, lr in zip(self.optimizer.param_groups, self._scheduled_lrs):
                group["lr"] = lr

    def _show_phase(self, round_index: int, phase: str) -> None:
        """Name the round and phase on the Trainer's progress bar: selection and challenges run between two update
        steps, where the bar would otherwise stand still without saying why."""
        label = (
            phase
            if phase == "repair"
            else f"round {min(round_index + 1, self.args.num_rounds)}/{self.args.num_rounds}: {phase}"
        )
        for callback in self.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.set_description(label, refresh=True)

    def check_weights_finite(self, consequence: str) -> None:
        """Raise :class:`NonFiniteWeightsError` naming the first encoder tensor holding NaN or inf."""
        broken = _first_non_finite(self.encoder)
        if broken is not None:
            raise NonFiniteWeightsError(
                f"encoder weight {broken[0]} holds {broken[1]} NaN/inf value(s) at update step "
                f"{self.state.global_step}: {consequence}. Lower learning_rate or check the lock data."
            )

    def end_lock(self) -> None:
        """At the end of ``train()``: the last update checked, the final challenge, the best encoder put back, the
        guard removed."""
        self.check_weights_finite("the lock stopped after its last update")
        self._warn_if_drift_ran_away()
        # a callback (early stopping, a time limit) may end train() before the last round: the final challenge and
        # the kept encoder are then named after the rounds that ran, not the rounds asked for
        final_round = min(self.args.num_rounds, self.lock_state.rounds_completed)
        self._warn_if_stopped_early(final_round)
        self._show_phase(final_round, "final challenge")
        self.challenge(round_index=final_round)
        self.restore_best_encoder(final_round)
        if self.guard is not None:
            self.guard.remove()
            self.guard = None

    def _warn_if_stopped_early(self, final_round: int) -> None:
        step, planned = self.state.global_step, self.args.max_steps
        if step >= planned:
            return
        missed = []
        if final_round < self.args.num_rounds:
            missed.append(f"rounds {final_round + 1}-{self.args.num_rounds}")
        if self.args.repair_steps:
            missed.append(f"the {self.args.repair_steps} repair steps")
        logger.warning(
            "The lock stopped early, at update step %d of %d (a callback ended training): %s did not run. The "
            "locked encoder holds %d round(s) of selection; measure it before publishing.",
            step,
            planned,
            " and ".join(missed) or "the last steps",
            final_round,
        )

    def _warn_if_drift_ran_away(self) -> None:
        """Say so when the authorized features ended far from the unlocked encoder's: the drift guard held only
        projected steps, or could not hold them, and the authorized domain probably paid for the lock."""
        drift, guard = self.lock_state.last_logs.get("authorized_drift"), self.args.max_authorized_drift
        if drift is None or guard <= 0 or drift <= DRIFT_WARNING_FACTOR * guard:
            return
        logger.warning(
            "The authorized features' drift at the last update was %.3g, %.0f times max_authorized_drift=%g: the "
            "lock moved what the authorized domain's probes see. Check the advantage kept on the authorized domain "
            "(the main job's report) before publishing; a smaller learning_rate or budget moves it less.",
            drift,
            drift / guard,
            guard,
        )

    def _challenge_due(self, round_index: int) -> bool:
        """Every ``challenge_every`` rounds, never twice for one round (round 0's runs in :meth:`begin_lock`)."""
        every = self.args.challenge_every
        return (
            round_index > 0
            and bool(every)
            and round_index % every == 0
            and round_index != self.lock_state.last_challenge_round
        )

    def _select_weights(self, round_index: int) -> dict[str, torch.Tensor]:
        """One round's newly selected entries (identical on every rank).

        Gradient statistics of the objective's prohibited and authorized terms over ``score_batches`` batches of
        each domain (reduced across processes), scores by ``score_function``, then the top ``layers_per_round``
        layers and top ``weights_per_round`` new weights (exact index mapping, see
        :func:`~hf_encoderlock.lock.selection.select_top_weights`), broadcast from rank 0.
        """
        args, candidates, device = self.args, self.candidates, self.args.device
        generator = torch.Generator().manual_seed(args.seed + SCORE_SEED_STRIDE * (round_index + 1))
        # A score batch is one global optimiser batch (all ranks x accumulation steps), drawn identically on every
        # rank; each rank scores its own micro-batch shards, and sync_gradient_stats averages over all of them.
        accumulation = args.gradient_accumulation_steps
        parts, first = args.world_size * accumulation, args.process_index * accumulation
        size = args.per_device_train_batch_size * parts

        def shards(data: LockRows) -> list[DomainTensors]:
            # Draw each global batch's rows, then decode only this rank's micro-batch shares of them
            out = []
            for _ in range(args.score_batches):
                index = torch.randperm(len(data), generator=generator)[:size]
                for part in range(first, first + accumulation):
                    share = index[part::parts]
                    out.append(data.take(share if len(share) else index[part % len(index)].view(1)))
            return out

        def term(a: DomainTensors, p: DomainTensors, which: str):
            def closure() -> torch.Tensor:
                p_labels = None if p.labels is None else p.labels.to(device)
                terms = self.objective_terms(
                    self.encoder, a.pixel_values.to(device), a.labels.to(device), p.pixel_values.to(device), p_labels
                )
                return getattr(terms, which)

            return closure

        a_batches, p_batches = shards(self.lock_authorized), shards(self.lock_prohibited)
        whole: dict[str, torch.Tensor] = {}  # the prohibited gradient summed over score batches, before projection

        def free_part(name: str, gradient: torch.Tensor) -> torch.Tensor:
            whole[name] = gradient.clone() if name not in whole else whole[name].add_(gradient)
            return self.projection.free_gradient(name, gradient)

        was_training = self.encoder.training
        self.encoder.eval()
        with self.guard.suspended():  # the guard's hooks would mask the very gradients that score weights
            # with a projection, weights are scored by the part of their gradient that the projection lets through
            prohibited = accumulate_gradient_stats(
                candidates,
                [term(a, p, "prohibited") for a, p in zip(a_batches, p_batches)],
                transform=None if self.projection is None else free_part,
            )
            authorized = accumulate_gradient_stats(
                candidates, [term(a, p, "authorized") for a, p in zip(a_batches, p_batches)]
            )
        self.encoder.train(was_training)
        prohibited, authorized = sync_gradient_stats(prohibited), sync_gradient_stats(authorized)
        scores = compute_scores(candidates, prohibited, authorized, args.score_function, args.score_eps)
        gate = None
        if args.magnitude_gate is not None:
            magnitudes = {name: weight.detach().abs() for name, weight in candidates.items()}
            gate = {
                name: value >= torch.quantile(value.float().flatten(), args.magnitude_gate)
                for name, value in magnitudes.items()
            }
        new = select_top_weights(
            scores, args.layers_per_round, args.weights_per_round, existing_mask=self.mask, magnitude_gate=gate
        )
        if self.projection is not None:
            # The share of the summed gradient's energy, from sums over every rank: ranks (and one process holding
            # their batches) must agree on what the share decides. The projection is linear, so the free part of the
            # sum is the sum of the free parts that the prohibited statistics hold.
            whole = sum_across_processes(whole)
            free = sum(prohibited.grad_sum[name].double().pow(2).sum() for name in whole)
            total = sum(gradient.double().pow(2).sum() for gradient in whole.values())
            self._last_free_share = float(free) / max(float(total), 1e-30)
        return sync_mask_across_processes(new)

    # ----------------------------------------------------------------------------------------- challenge
    @torch.no_grad()
    def encode(self, data: LockRows, batch_size: int | None = None) -> torch.Tensor:
        """Features of the current encoder for lock data (eval mode, no gradient), ``batch_size`` images at a time
        (default: ``per_device_eval_batch_size``)."""
        was_training = self.encoder.training
        self.encoder.eval()
        device = self.args.device
        batch_size = batch_size or self.args.per_device_eval_batch_size
        parts = [self.encoder(chunk.to(device)).float().cpu() for chunk in data.pixel_chunks(batch_size)]
        self.encoder.train(was_training)
        return torch.cat(parts)

    def _fit_best_head(self, train_x, train_y, val_x, val_y, num_classes: int, seed_offset: int):
        args = self.args
        heads = []
        for kind in args.adversary_kinds:
            heads += train_heads(
                train_x,
                train_y,
                val_x,
                val_y,
                kind=kind,
                lrs=tuple(args.adversary_learning_rates),
                weight_decays=(0.0,),
                seeds=tuple(args.seed + seed_offset + s for s in range(args.adversary_seeds)),
                hidden=(args.adversary_hidden_size,),
                num_classes=num_classes,
                config=HeadTrainingConfig(epochs=args.adversary_epochs),
            )
        return best_head(heads)

    def challenge(self, round_index: int) -> dict[str, float]:
        """Fit fresh heads on the current encoder; install the strongest adversary; track the best encoder.

        Features of the lock data are extracted once; an ensemble of fresh heads (``adversary_kinds`` x seeds x
        learning rates) is fitted on them and the strongest by validation accuracy becomes the adversary if it beats
        the current one there; a fresh authorized head is fitted the same way.
        """
        state, sets = self.lock_state, self.challenge_sets
        started = time.perf_counter()
        a_train, a_val = self.encode(sets["lock_authorized"]), self.encode(sets["val_authorized"])
        p_train, p_val = self.encode(sets["lock_prohibited"]), self.encode(sets["val_prohibited"])
        offset = 1000 * (round_index + 1)
        auth = self._fit_best_head(
            a_train,
            sets["lock_authorized"].labels,
            a_val,
            sets["val_authorized"].labels,
            self.lock_authorized.num_classes,
            offset,
        )
        adv = self._fit_best_head(
            p_train,
            sets["lock_prohibited"].labels,
            p_val,
            sets["val_prohibited"].labels,
            self.lock_prohibited.num_classes,
            offset + 500,
        )
        device = self.args.device
        in_use = state.heads  # the heads the updates before this challenge trained against
        current_adv = (
            head_accuracy(in_use.adversary.cpu(), p_val, sets["val_prohibited"].labels) if in_use is not None else -1.0
        )
        adversary = adv.module if adv.val_accuracy >= current_adv else in_use.adversary
        for module in (auth.module, adversary):
            module.requires_grad_(False)
        state.heads = LockHeads(authorized=auth.module.to(device), adversary=adversary.to(device))
        state.adversary_val_accuracy = max(adv.val_accuracy, current_adv)
        gap = auth.val_accuracy - adv.val_accuracy
        # The unlocked encoder (round 0) is never kept; among locked ones, ties go to the later encoder.
        if round_index > 0 and gap >= state.best_gap:
            state.best_gap = gap
            state.best_state = {n: p.detach().clone() for n, p in self.candidates.items()}
            state.best_heads = state.heads
            state.best_stale_heads = in_use
            state.best_round = round_index
        state.last_challenge_round = round_index
        elapsed = time.perf_counter() - started
        state.phase_time["challenge"] += elapsed
        figures = {
            "round": round_index,
            "challenge_authorized_val_accuracy": auth.val_accuracy,
            "challenge_prohibited_val_accuracy": adv.val_accuracy,
            "challenge_gap": gap,
            "adversary_val_accuracy": state.adversary_val_accuracy,
            "time_challenge_s": elapsed,
        }
        self.record_round(figures)
        return figures

    def restore_best_encoder(self, final_round: int | None = None) -> None:
        """Put back the encoder with the best validation gap (``best_model_criterion="gap"``); ``final_round``: the
        rounds that ran (default: all of them)."""
        state = self.lock_state
        if self.args.best_model_criterion != "gap" or state.best_state is None:
            return
        with torch.no_grad():
            for name, value in state.best_state.items():
                self.candidates[name].copy_(value)
        state.heads = state.best_heads
        state.stale_heads = state.best_stale_heads
        final_round = self.args.num_rounds if final_round is None else final_round
        self.record_round({"round": final_round, "restored_best_round": state.best_round})

    def record_round(self, figures: dict[str, Any]) -> None:
        """Keep per-round figures and send them through the Trainer's logging (``report_to``)."""
        if "time_selection_s" in figures:
            self.lock_state.phase_time["selection"] += figures["time_selection_s"]
        self.lock_state.history.append({"step": self.state.global_step, **figures})
        if self.args.logging_strategy != "no":  # the user turned logging off: the history still keeps them
            self.log({f"lock/{k}": float(v) for k, v in figures.items()})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.lock_state.last_logs:
            logs = {**logs, **{f"lock/{k}": v for k, v in self.lock_state.last_logs.items()}}
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------- evaluate
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Accuracy of the lock's own heads on ``{"authorized": ds, "prohibited": ds}``: the heads the last updates
        of the kept encoder trained against, fitted before those updates (stale heads; the current ones when no
        encoder was restored). Not the lock's strength, which only the probe suite measures."""
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if datasets is None:
            raise ValueError("evaluate needs eval_dataset={'authorized': ..., 'prohibited': ...}")
        if eval_dataset is not None and isinstance(datasets, dict):  # self.eval_dataset was read at construction
            datasets = {key: self._as_eval_dataset(key, value) for key, value in datasets.items()}
        self._check_eval_datasets(datasets)
        if self.heads is None:
            self.challenge(round_index=0)
        metrics = {}
        for key, dataset in datasets.items():
            if key == "prohibited" and self.args.variant != "supervised":
                continue  # the adversary predicts pseudo-classes or synthetic classes, not the domain's labels
            data = load_lock_domain(self.encoder, dataset, key, cache_bytes=self.args.lock_cache_bytes)
            own = self.stale_heads or self.heads
            head = own.authorized if key == "authorized" else own.adversary
            metrics[f"{metric_key_prefix}_{key}_head_accuracy"] = head_accuracy(
                head.cpu(), self.encode(data), data.labels
            )
            head.to(self.args.device)
        if len(metrics) == 2:  # one number for early stopping / best checkpoints: higher is a stronger lock
            metrics[f"{metric_key_prefix}_head_gap"] = (
                metrics[f"{metric_key_prefix}_authorized_head_accuracy"]
                - metrics[f"{metric_key_prefix}_prohibited_head_accuracy"]
            )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---------------------------------------------------------------------------------------------- saving
    def lock_summary(self) -> dict[str, Any]:
        """The content of ``encoderlock_config.json``."""
        stats = mask_stats(self.mask, self.encoder, candidates=self.candidates)
        return {
            "format": LOCK_CONFIG_FORMAT,
            "variant": self.args.variant,
            "objective": self.args.objective,
            "base_model": self._base_model(),
            # the poolings whose prohibited features the objective saw (probes attack every pooling regardless)
            "poolings": list(self.prohibited_poolings or [self.encoder.pooling]),
            "authorized": self._authorized_specs(),
            "prohibited": self._prohibited_specs(),
            "hyperparameters": self.args.lock_hyperparameters(),
            "mask": {
                "count": stats["count"],
                "fraction": stats["fraction_of_parameters"],
                "fraction_of_candidates": stats["fraction_of_candidates"],
                "num_parameters": stats["num_parameters"],
                "per_layer": {name.removeprefix("backbone."): n for name, n in stats["per_layer"].items()},
            },
            "rounds_completed": self.rounds_completed_in_mask,
            # authorized_projection='auto' found no room at the first round and the lock ran unprojected
            "projection_dropped": self.lock_state.projection_dropped,
            "best_round": self.best_round,
            "seed": self.args.seed,
            "versions": package_versions(),
        }

    def _base_model(self) -> str | None:
        """The Hub id the encoder was loaded from (``config._name_or_path``); ``None`` for a local folder (its path
        is never recorded in a file that may be published) or when the backbone records none."""
        name = getattr(getattr(self.encoder.backbone, "config", None), "_name_or_path", "") or ""
        return name if is_hub_id(name) else None

    def _prohibited_specs(self) -> list[Any]:
        if self.zero_shot_source is not None:
            images = len(self.lock_prohibited) + len(self.val_prohibited)
            return [{"zero_shot_generators": self.zero_shot_source, "images": images}]
        spec = self.domain_specs.get("prohibited", self.prohibited_name)
        if self.pseudo_labelled:
            pseudo = f"k-means, k={self.args.num_pseudo_classes}"
            return [{"domain": public_domain_record(spec), "labels": "none read", "pseudo_labels": pseudo}]
        return [public_domain_record(spec)]

    def _authorized_specs(self) -> list[Any]:
        specs = self.domain_specs.get("authorized", self.authorized_name)
        return [public_domain_record(s) for s in (specs if isinstance(specs, (list, tuple)) else [specs])]

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write the encoder alone (``AutoModel.from_pretrained`` loads it), its processor, config and mask.

        Main process only. Everything is written into a hidden staging sibling first and renamed into place at the
        end (see :func:`hf_encoderlock._utils.atomic_folder`), so an interrupted save leaves no folder that loads as
        if complete.
        """
        if not self.args.should_save:
            return
        self.check_weights_finite("nothing was saved")
        target = Path(output_dir or self.args.output_dir).resolve()
        if not self._saving_checkpoint and target not in self._saved_to:  # its own saves and checkpoints: no flag
            check_output_folder(target, LOCK_CONFIG_FILE, self.args.overwrite_output_dir, "save_model", self._sources)
            self._saved_to.add(target)
        with atomic_folder(target) as staging:
            self._write_saved_files(staging, target.name)

    def _write_saved_files(self, folder: Path, model_name: str) -> None:
        """The files of one save, written into ``folder`` (the card names the model ``model_name``)."""
        self.encoder.save_pretrained(folder)
        (folder / LOCK_CONFIG_FILE).write_text(json.dumps(self.lock_summary(), indent=2, default=str))
        if self._saving_checkpoint:
            self.lock_state.objective = self.objective.state_dict()  # the objective's own state, as of this step
            self.lock_state.save(folder)
        else:
            self.lock_state.save_mask(folder)
        write_model_card(folder, report=None, model_name=model_name)

    def _save_checkpoint(self, model, trial) -> None:
        """A Trainer checkpoint that also holds the :class:`LockState` (what an exact resume needs beyond encoder,
        optimizer, scheduler and RNG states)."""
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def push_to_hub(
        self, commit_message="End of training", blocking=True, token=None, revision=None, private=None, **kwargs
    ):
        """Save, then push the encoder, processor, lock config and model card (not a wrapper module); extra keywords
        ``repo_id``, ``gated``, ``report``, ``include_mask`` (see :func:`push_trainer_to_hub`)."""
        return push_trainer_to_hub(self, commit_message, token=token, revision=revision, private=private, **kwargs)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """``push_to_hub=True``: create the repository at construction with a client made now (so ``HF_ENDPOINT`` and
        the token are read as they are now, not from a client cached by an earlier run in the same process)."""
        if not self.is_world_process_zero():
            return
        repo_name = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        private = private if private is not None else self.args.hub_private_repo
        url = HfApi(token=token or self.args.hub_token).create_repo(repo_name, private=private, exist_ok=True)
        self.hub_model_id = url.repo_id
        self.push_in_progress = None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """``push_to_hub=True`` during training (every ``hub_strategy`` but ``end``): the checkpoint's public files
        go through the lock's own push (card, processor, gate); its mask, lock state, optimizer and RNG states stay
        local, and no checkpoint folder is uploaded."""
        if not self.is_world_process_zero() or self.args.hub_strategy == "end":
            return
        push_locked_to_hub(
            checkpoint_folder,
            self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).resolve().name,
            private=self.args.hub_private_repo,
            gated=self.args.hub_gated,
            token=self.args.hub_token,
            commit_message=f"Lock in progress, step {self.state.global_step}",
            revision=self.args.hub_revision,
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the last *complete* checkpoint under
        ``output_dir`` (one cut short by a kill or a full disk, or with a file that does not load, is skipped with a
        warning naming it), and a checkpoint made with other lock settings is refused."""
        if resume_from_checkpoint is True:
            found, skipped = resumable_checkpoint(self.args.output_dir)
            damaged = "; ".join(f"{path.name}: {problem}" for path, problem in skipped)
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True: no complete checkpoint in {self.args.output_dir}"
                    + (f" (passed over {damaged})" if damaged else "")
                )
            if skipped:
                logger.warning("resume_from_checkpoint=True: resuming from %s, passing over %s", found.name, damaged)
            resume_from_checkpoint = str(found)
        if resume_from_checkpoint and self._finished_at(Path(resume_from_checkpoint)):
            return self._finish_from_checkpoint(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def _finished_at(self, checkpoint: Path) -> bool:
        """Whether ``checkpoint`` was saved after the last update (the Trainer would run one step too many)."""
        if not checkpoint_is_complete(checkpoint):
            return False
        saved = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        return int(saved.get("global_step", 0)) >= self.args.max_steps

    def _finish_from_checkpoint(self, checkpoint: Path) -> TrainOutput:
        """Resume a run killed after its last update: restore the checkpoint, then do what the end of ``train()``
        does (the final challenge, the best encoder put back), as the uninterrupted run did."""
        self._load_from_checkpoint(str(checkpoint))
        self.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_FILE))
        self.end_lock()
        return TrainOutput(self.state.global_step, 0.0, {})

    def _check_same_lock(self, folder: Path) -> None:
        """Refuse a checkpoint whose lock was made with other settings: the resumed run's encoderlock_config.json
        would misstate how the result was made."""
        saved = json.loads((folder / LOCK_CONFIG_FILE).read_text(encoding="utf-8"))
        current = json.loads(json.dumps(self.lock_summary(), default=str))
        differ = [key for key in RESUME_MUST_MATCH if saved.get(key) != current.get(key)]
        theirs, ours = saved.get("hyperparameters", {}), current["hyperparameters"]
        differ += [f"hyperparameters.{k}" for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        if differ:
            raise ValueError(
                f"{folder} was made with other lock settings ({', '.join(differ)}); resume it with the same "
                "settings (EncoderLockConfig.from_pretrained(checkpoint)) or start a new run in another output_dir"
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        folder = Path(resume_from_checkpoint)
        problem = checkpoint_problem(folder)
        if problem is not None:
            raise ValueError(
                f"{folder} is not a complete checkpoint ({problem}); resume from an earlier one "
                "(resume_from_checkpoint=True takes the last complete one)"
            )
        if (folder / LOCK_CONFIG_FILE).is_file():
            self._check_same_lock(folder)
        if (folder / MASK_FILE).is_file():
            loaded = LockState.load(folder, self.args.device)
            if loaded.objective is None:  # a checkpoint without the state files: only its mask and round count
                loaded = replace(self.lock_state, mask=loaded.mask, rounds_completed=loaded.rounds_completed)
            else:
                self.objective.load_state_dict(loaded.objective)
            self.lock_state = loaded
        if (Path(resume_from_checkpoint) / MODEL_CONFIG_FILE).is_file():
            # from_pretrained maps the on-disk names (which can differ from in-memory names across transformers
            # releases) back to this model's; a strict load then guarantees every tensor was restored.
            saved = AutoModel.from_pretrained(resume_from_checkpoint, **NO_REMOTE_CODE).state_dict()
            self.encoder.backbone.load_state_dict(saved, strict=True)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def phase_times(self) -> dict[str, float]:
        """Seconds spent in selection, masked updates, challenges and computing reference features so far."""
        return dict(self.lock_state.phase_time)


def push_trainer_to_hub(
    trainer: EncoderLockTrainer,
    commit_message: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    *,
    repo_id: str | None = None,
    gated: bool | str = False,
    report: dict[str, Any] | None = None,
    include_mask: bool = False,
) -> Any:
    """What :meth:`EncoderLockTrainer.push_to_hub` does: save the locked encoder, then push it (main process only).

    ``repo_id`` defaults to ``args.hub_model_id``, then to the output folder's name; ``private`` and ``token`` default
    to ``args.hub_private_repo`` and ``args.hub_token``.
    """
    args = trainer.args
    trainer.save_model(args.output_dir, _internal_call=True)  # every process; _internal_call: no push from save_model
    if not trainer.is_world_process_zero():
        return None
    return push_locked_to_hub(
        args.output_dir,
        repo_id or args.hub_model_id or Path(args.output_dir).resolve().name,
        private=private if private is not None else args.hub_private_repo,
        gated=gated or args.hub_gated,
        token=token or args.hub_token,
        commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
        revision=revision,
        report=report,
        include_mask=include_mask,
    )
