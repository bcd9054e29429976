"""``EncoderLockTrainer``: the EncoderLock loop on ``transformers.Trainer``.

One Trainer optimiser step is one masked update of the encoder on a pair of batches (authorized + prohibited),
minimising the configured :mod:`objective <hf_encoderlock.lock.objectives>` through the current heads. The trainer
orchestrates and persists; each job it orchestrates has its own module:

- :mod:`~hf_encoderlock.lock.lock_data`: what the lock reads (intake, pseudo-labels, generated images, the attacker
  views of ``prohibited_transforms``, the lock / validation splits);
- :mod:`~hf_encoderlock.lock.rounds`: the round driver (weight selection; masked, projected, bounded updates);
- :mod:`~hf_encoderlock.lock.challenger`: the adversaries (fresh heads at each self-challenge, simulated attacker
  fine-tuning);
- :mod:`~hf_encoderlock.lock.state`: everything a run carries between steps, one :class:`LockState`.

A round (self-challenge when due, weight selection, then ``update_steps_per_round`` updates) starts in
:meth:`EncoderLockTrainer.start_round`, called by :class:`~hf_encoderlock.lock.callbacks.LockRoundCallback`. The model
handed to the Trainer is the :class:`EncoderAdapter` itself, so the optimiser, DDP and mixed precision only ever see
encoder weights; heads live in the lock state.

Private ``transformers.Trainer`` hooks are overridden only where the Trainer has no public one; each is listed in
:data:`PRIVATE_TRAINER_HOOKS` with the parameters it was checked against (``tests/lock/test_trainer_hooks.py`` fails
when an installed ``transformers`` changes one).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from torch import nn
from torch.func import functional_call
from transformers import AutoModel, PreTrainedModel, Trainer, TrainerState
from transformers.trainer_utils import TrainOutput

from .._files import (
    CHECKPOINT_PREFIX,
    LOCK_CONFIG_FILE,
    LOCK_CONFIG_FORMAT,
    MASK_FILE,
    MODEL_CONFIG_FILE,
    PRIVATE_FOLDER_MODE,
    TRAINER_STATE_FILE,
)
from .._utils import atomic_folder, check_output_folder, package_versions
from ..data.lock_tensors import LockDataError, PairedDomainCollator, PairedDomainDataset, check_labelled_dataset
from ..data.streamed import load_lock_domain
from ..encoders import NO_REMOTE_CODE, EncoderAdapter, EncoderError, load_encoder, saved_weight_keys
from ..hub.card import write_model_card
from ..hub.public_names import is_hub_id, public_domain_record
from ..hub.push import DEFAULT_COMMIT_MESSAGE, push_locked_to_hub
from ..probing.heads import head_accuracy
from ..probing.learned_transforms import LEARNED_TRANSFORMS, LearnedMapFit, fit_colour_map_to_pixels
from .callbacks import LockRoundCallback
from .challenger import Challenger, simulated_attacker_weights
from .config import AUTO_POOLINGS, EncoderLockConfig, check_supported_settings
from .distributed import gather_batch
from .lock_data import DatasetReader, LockData, concat_poolings
from .objectives import LockObjective, ObjectiveTerms, build_objective
from .rounds import RoundDriver, candidate_weights, check_budget, weights_per_round_for
from .selection import mask_stats
from .state import LockState, checkpoint_is_complete, checkpoint_problem, checkpoint_to_resume
from .variants.augmentations import AugmentationConfig, augmented_view

logger = logging.getLogger(__name__)
# Warn when the authorized drift at the last update is this many times max_authorized_drift.
DRIFT_WARNING_FACTOR = 10.0

# encoderlock_config.json entries a resumed checkpoint must share with the run (with every hyperparameter)
RESUME_MUST_MATCH = ("variant", "objective", "base_model", "poolings", "authorized", "prohibited", "seed")
VIEW_SEED_OFFSET = 104_729  # augmented views draw from their own generator, seeded args.seed + this
# colour_map_every: the lock's colour map is the adaptive attacker's (same hidden units), fitted on at most as many
# images as the attacker's, for fewer epochs: the lock refits it every colour_map_every rounds
COLOUR_MAP_FIT = LearnedMapFit(epochs=4)
COLOUR_MAP_HIDDEN = int(LEARNED_TRANSFORMS["colour_map"].strengths[0])

#: The transformers release the private Trainer hooks below were last checked against.
TRANSFORMERS_CHECKED = "5.25.0"
#: Private ``transformers.Trainer`` names this trainer overrides or calls, for want of a public hook, and the
#: parameters (after ``self``) each had in :data:`TRANSFORMERS_CHECKED`. ``_train_batch_size`` is an attribute: the
#: Trainer's dataloader and its step count both read it.
PRIVATE_TRAINER_HOOKS: dict[str, tuple[str, ...] | None] = {
    "_save": ("output_dir", "state_dict"),
    "_save_checkpoint": ("model", "trial"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_push_from_checkpoint": ("checkpoint_folder",),
    "init_hf_repo": ("token", "private"),
    "save_model": ("output_dir", "_internal_call"),  # public, called with its private _internal_call flag
    "_train_batch_size": None,
}


def _state_field(name: str, doc: str) -> property:
    """A read-only trainer property delegating to ``trainer.lock_state.<name>``."""
    return property(lambda trainer: getattr(trainer.lock_state, name), doc=doc)


def _data_field(name: str, doc: str) -> property:
    """A read-only trainer property delegating to ``trainer.lock_data.<name>``."""
    return property(lambda trainer: getattr(trainer.lock_data, name), doc=doc)


class NonFiniteWeightsError(FloatingPointError):
    """An encoder weight holds NaN or inf: nothing is saved (the message names the tensor)."""


def _log_number(value: Any) -> int | float:
    """A round figure as the Trainer's logs take it: an integer stays one, anything else (flags too) is a float."""
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


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

    # The Trainer's own gradient-accumulation scaling applies: compute_loss returns the unscaled objective.
    loss_is_scaled_for_ga = False

    # Read access to the lock state and the lock data under the names the rest of the package and its users know.
    mask = _state_field("mask", "The OR-accumulated mask of selected weight entries (parameter name -> bool).")
    rounds_completed_in_mask = _state_field("rounds_completed", "Rounds whose selection is in :attr:`mask`.")
    heads = _state_field("heads", "The heads the updates train against (:class:`LockHeads`, or ``None``).")
    stale_heads = _state_field("stale_heads", "After the best encoder was restored: the heads it trained against.")
    best_round = _state_field("best_round", "The round of the kept encoder (``best_model_criterion='gap'``).")
    best_gap = _state_field("best_gap", "The kept encoder's validation gap (authorized - prohibited accuracy).")
    history = _state_field("history", "Per-round figures, in the order they were recorded.")
    projection = _state_field("projection", "The authorized projection in use (``None``: unprojected).")
    lock_authorized = _data_field("lock_authorized", "The authorized images the lock trains on.")
    val_authorized = _data_field("val_authorized", "The authorized validation split (heads, kept encoder).")
    lock_prohibited = _data_field("lock_prohibited", "The prohibited images the lock trains on.")
    val_prohibited = _data_field("val_prohibited", "The prohibited validation split.")
    challenge_sets = _data_field("challenge_sets", "What each self-challenge encodes, by split.")
    zero_shot_source = _data_field("zero_shot_source", "Zero-shot: the generators (or 'user-supplied').")
    pseudo_labelled = _data_field("pseudo_labelled", "Whether the prohibited labels are k-means clusters.")

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
        hub_strategy = str(getattr(args.hub_strategy, "value", args.hub_strategy))  # TrainingArguments makes an enum
        if args.push_to_hub and hub_strategy != "end":
            logger.warning(
                "hub_strategy=%r: a lock is pushed once, finished (save_model or push_to_hub), never at a checkpoint: "
                "a half-done lock would publish original weights where the lock changes them",
                hub_strategy,
            )
        if args.push_to_hub and not isinstance(encoder.backbone, PreTrainedModel):
            # found on the user's path: the first pushed checkpoint failed, after the lock had run, on a missing
            # config.json; a Hub copy must load with AutoModel, which a plain module's folder cannot
            raise EncoderError(
                f"push_to_hub=True needs a transformers PreTrainedModel backbone, got a plain "
                f"{type(encoder.backbone).__name__}: its locked folder (weights + encoderlock_module.json) does not "
                "load with AutoModel, so it cannot be published. Lock with push_to_hub=False and save_model() locally."
            )
        self.reader = DatasetReader(dict(column_mapping or {}), dataset_split, allow_local_images_under)
        authorized_dataset = self.reader.read(authorized_dataset, authorized_name)
        if prohibited_dataset is not None:
            prohibited_dataset = self.reader.read(prohibited_dataset, prohibited_name)
            if args.variant == "supervised":  # its labels, before the authorized images are decoded
                check_labelled_dataset(prohibited_dataset, prohibited_name)
        if eval_dataset is not None and isinstance(eval_dataset, dict):
            eval_dataset = self.reader.read_eval(eval_dataset)
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
        self.lock_data = LockData.load(
            encoder,
            args,
            authorized_dataset,
            prohibited_dataset,
            authorized_name,
            prohibited_name,
            self.prohibited_poolings,
        )
        self.lock_data.check_eval_datasets(eval_dataset)
        self.candidates = candidate_weights(encoder, args)
        if args.weight_budget_share is not None:
            # resolved here, where the candidates are known, and kept on args: the lock's saved config, the card, the
            # audit's budget check and a resume all read weights_per_round
            args.weights_per_round = weights_per_round_for(self.candidates, args)
            logger.info(
                "weight_budget_share=%g of %d candidate weights over %d rounds: weights_per_round=%d",
                args.weight_budget_share,
                sum(param.numel() for param in self.candidates.values()),
                args.num_rounds,
                args.weights_per_round,
            )
        check_budget(self.candidates, args)
        for name, param in encoder.named_parameters():  # the optimiser holds candidate weights only
            param.requires_grad_(name in self.candidates)
        if args.projection_threshold() is None and args.learning_rate > args.unprojected_learning_rate:
            # the default rate is tuned for projected updates; unprojected ones at that rate wreck the authorized
            # domain (docs/DEFAULT_LOCK.md has the measurements)
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
        self.augmentation = AugmentationConfig.from_lock_config(args)
        self._normalization = encoder.normalization()
        self.lock_state = LockState(view_generator=torch.Generator().manual_seed(args.seed + VIEW_SEED_OFFSET))
        self.rounds = RoundDriver(
            args,
            encoder,
            self.candidates,
            self.lock_data,
            self._selection_terms,
            self.reference_encoder,
            lowers_prohibited=self.objective.lowers_prohibited,
        )
        self.challenger = Challenger(args, encoder, self.lock_data)
        if args.finetune_aware_steps and args.world_size > 1:
            raise NotImplementedError("finetune_aware_steps is single-process: its simulated steps bypass DDP")
        self._saving_checkpoint = False
        self._saved_to: set[Path] = {Path(args.output_dir).resolve()}  # checked above, at construction
        self.prohibited_batch_factor = self._usable_prohibited_batch_factor(args)
        if args.dataloader_pin_memory and not torch.accelerator.is_available():
            # pinning is for copies to an accelerator: on a CPU-only machine torch only warns about it, every run
            args.dataloader_pin_memory = False
        # each of world_size processes reads its own share of the pairs (found on the user's path: a 2-process main
        # job whose shares were each below one batch dropped every batch, made no update, and reported success)
        if self.lock_data.pairs < args.per_device_train_batch_size * args.world_size:
            args.dataloader_drop_last = False  # less than one batch: dropping it would leave nothing to train on
        super().__init__(
            model=encoder,
            args=args,
            train_dataset=PairedDomainDataset(self.lock_authorized, self.lock_prohibited, seed=args.seed),
            data_collator=PairedDomainCollator(
                self.lock_authorized,
                self.lock_prohibited,
                prohibited_per_authorized=self.prohibited_batch_factor,
                prohibited_views=self.lock_data.batch_views,
                seed=args.seed,
            ),
            eval_dataset=eval_dataset,
            callbacks=list(callbacks or []),
        )
        # A batch is k x per_device_train_batch_size pairs, of which the collator keeps k x prohibited, 1 x
        # authorized. Private Trainer attribute (checked against transformers 5.25.0): no public
        # setting sizes the dataloader's batches apart from per_device_train_batch_size, which the heads also read.
        self._train_batch_size = self.prohibited_batch_factor * args.train_batch_size
        self.add_callback(LockRoundCallback(self))

    # ------------------------------------------------------------------------------------------------ setup
    def _usable_prohibited_batch_factor(self, args: EncoderLockConfig) -> int:
        """``prohibited_batch_factor``, lowered (with a warning) until a batch of that many pairs per authorized
        image fits in one pass over the lock data (pairs: as many as the longer domain has images, shared among the
        processes)."""
        pairs, batch = self.lock_data.pairs, args.per_device_train_batch_size
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
        p_features = concat_poolings({p: pooled[p][num_authorized:] for p in poolings}, poolings)
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
        colour_map = self.lock_state.colour_map
        if colour_map is not None:  # half of the prohibited batch as the attacker's learned colour map shows it
            half = len(p_pixels) // 2
            with torch.no_grad():
                p_pixels = torch.cat([p_pixels[:half], colour_map.to(p_pixels.device)(p_pixels[half:])])
        n_a, extra = len(a_pixels), {}
        if self.objective.uses_views:
            views = augmented_view(
                torch.cat([a_pixels, p_pixels]), *self._normalization, self.augmentation, self.lock_state.view_generator
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
        state = self.lock_state
        if a_index is None:
            with torch.no_grad():
                return self.reference_encoder(a_pixels)
        block, count, device = self.args.per_device_train_batch_size, len(self.lock_authorized), a_pixels.device
        if state.reference_known is None or state.reference_known.device != device:
            state.reference_known = torch.zeros(-(-count // block), dtype=torch.bool, device=device)
            state.reference_cache = None
        a_index = a_index.to(device)
        for start in (torch.unique(a_index // block) * block).tolist():
            if bool(state.reference_known[start // block]):
                continue
            rows, started = torch.arange(start, min(start + block, count)), time.perf_counter()
            with torch.no_grad():
                fresh = self.reference_encoder(self.lock_authorized.take(rows).pixel_values.to(device))
            state.phase_time["reference"] += time.perf_counter() - started
            if state.reference_cache is None:
                state.reference_cache = torch.zeros((count, *fresh.shape[1:]), dtype=fresh.dtype, device=device)
            state.reference_cache[start : start + len(rows)] = fresh
            state.reference_known[start // block] = True
        return state.reference_cache[a_index]

    @property
    def repairing(self) -> bool:
        """Whether the update being computed is one of the ``repair_steps`` after the last round. Not when 'auto'
        dropped the projection: unprojected, the lock's cost to the authorized domain lies along what it removed, and
        a repair takes both back (docs/DEFAULT_LOCK.md, "When the projection leaves no room", has the measurement),
        so those steps continue the lock on the last round's mask instead."""
        return self._is_repair_step(self.state.global_step)

    def _is_repair_step(self, step: int) -> bool:
        """Whether update ``step`` (0-based) is a repair step (see :attr:`repairing`)."""
        return step >= self.args.lock_steps and not self.lock_state.projection_dropped

    def _selection_terms(self, a_pixels, a_labels, p_pixels, p_labels) -> ObjectiveTerms:
        """The objective on one pair of score batches, through the encoder itself (the round driver's ``terms``)."""
        return self.objective_terms(self.encoder, a_pixels, a_labels, p_pixels, p_labels)

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

    def _terms_after_simulated_finetuning(self, a_features, a_labels, p_pixels, p_labels, reference_kwargs):
        """The objective with the prohibited features of the encoder after simulated attacker fine-tuning (the
        authorized features, given without gradient, and ``reference_kwargs`` come from the main pass)."""
        if p_labels is None:
            raise ValueError("finetune_aware_steps needs prohibited labels or pseudo-labels")
        args = self.args
        weights = simulated_attacker_weights(
            self.encoder, self.heads.adversary, p_pixels, p_labels, args.finetune_aware_steps, args.finetune_aware_lr
        )
        poolings = self.prohibited_poolings
        if poolings:
            pooled = functional_call(self.encoder, weights, (p_pixels,), {"poolings": list(poolings)})
            p_features = concat_poolings(pooled, poolings)
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
        self.rounds.attach(self.lock_state, self.optimizer)

    @property
    def guard(self):
        """The :class:`~hf_encoderlock.lock.masking.MaskedParameterGuard` over the encoder while ``train()`` runs."""
        return self.rounds.guard

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
                # into unprojected repair steps they would move the authorized features.
                self.optimizer.state.clear()
            self._show_phase(round_index, "repair")
            return
        if self._challenge_due(round_index):
            self._show_phase(round_index, "challenge")
            self.challenge(round_index=round_index)
        if round_index < self.lock_state.rounds_completed:
            self._show_phase(round_index, "updates")
            return
        if self.args.colour_map_every and round_index % self.args.colour_map_every == 0:
            self._show_phase(round_index, "colour map")
            self.fit_colour_map(round_index)
        self._show_phase(round_index, "selection")
        self.record_round(self.rounds.select_round(self.lock_state, round_index))
        self._show_phase(round_index, "updates")

    def fit_colour_map(self, round_index: int) -> None:
        """The attacker's learned colour map (``colour_map_every``), fitted through the current encoder on up to
        ``COLOUR_MAP_FIT.max_images`` seeded prohibited lock images (originals, not their transformed copies), and
        used from now on (see :meth:`objective_terms`). Its time counts as challenge time; the round's history records
        it."""
        started = time.perf_counter()
        data = self.lock_data.original_prohibited  # the attacker fits its map on untransformed images
        generator = torch.Generator().manual_seed(self.args.seed + round_index)
        rows = torch.randperm(len(data), generator=generator)[: COLOUR_MAP_FIT.max_images].sort().values
        part = data.take(rows)
        device = next(self.encoder.parameters()).device
        fit = replace(COLOUR_MAP_FIT, seed=self.args.seed + round_index)
        self.lock_state.colour_map = fit_colour_map_to_pixels(
            self.encoder,
            part.pixel_values.to(device),
            part.labels,
            COLOUR_MAP_HIDDEN,
            fit,
            num_classes=part.num_classes,
        )
        seconds = time.perf_counter() - started
        self.lock_state.phase_time["challenge"] += seconds
        self.record_round({"round": round_index, "colour_map_images": len(rows), "time_colour_map_s": seconds})

    def before_optimizer_step(self) -> None:
        """Before each optimiser step (see :meth:`RoundDriver.before_optimizer_step`)."""
        self.rounds.before_optimizer_step(self.lock_state, self.optimizer, self.repairing)

    def after_optimizer_step(self) -> None:
        """After each optimiser step (see :meth:`RoundDriver.after_optimizer_step`)."""
        self.rounds.after_optimizer_step(self.lock_state, self.optimizer, self.repairing)

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
        self.rounds.detach()

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

    # ----------------------------------------------------------------------------------------- challenge
    def encode(self, data, batch_size: int | None = None) -> torch.Tensor:
        """Features of the current encoder for lock data (see :meth:`Challenger.encode`)."""
        return self.challenger.encode(data, batch_size)

    def challenge(self, round_index: int) -> dict[str, float]:
        """A self-challenge (see :meth:`Challenger.challenge`): fresh heads installed, the best encoder tracked; its
        figures recorded and returned."""
        figures = self.challenger.challenge(self.lock_state, round_index, self.candidates)
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
            # counts stay integers (a float mask size was printed as '1.02e+04'); the rest as numbers for report_to
            self.log({f"lock/{k}": _log_number(v) for k, v in figures.items()})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.lock_state.last_logs:
            logs = {**logs, **{f"lock/{k}": v for k, v in self.lock_state.last_logs.items()}}
        if "learning_rate" in logs and self._is_repair_step(self.state.global_step - 1):
            # the Trainer logs its scheduler's rate, after the step it reports on; a repair step ran at
            # repair_learning_rate (found on the user's path: the logs showed the lock's rate during repair)
            logs = {**logs, "learning_rate": self.args.repair_learning_rate}
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
            datasets = self.reader.read_eval(datasets)
        self.lock_data.check_eval_datasets(datasets)
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
        per_layer = {name.removeprefix("backbone."): n for name, n in stats["per_layer"].items()}
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
                "per_layer": per_layer,
                # where a reader of model.safetensors finds each tensor (transformers renames some in memory)
                "saved_keys": saved_weight_keys(self.encoder.backbone, list(per_layer)),
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

    # Private Trainer hook (checked against transformers 5.25.0): save_model and every checkpoint
    # write through it, and no public hook replaces what a save writes.
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

    # Private Trainer hook (checked against transformers 5.25.0): the on_save callback runs after the
    # files are written, too late to add the lock state to them.
    def _save_checkpoint(self, model, trial) -> None:
        """A Trainer checkpoint that also holds the :class:`LockState` (what an exact resume needs beyond encoder,
        optimizer, scheduler and RNG states)."""
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False
        # private as a whole: besides the mask, the optimizer state is non-zero exactly on the changed weights, and
        # the Trainer writes it readable by everyone (found on the user's path)
        checkpoint = Path(self.args.output_dir) / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        if checkpoint.is_dir():
            checkpoint.chmod(PRIVATE_FOLDER_MODE)

    def push_to_hub(
        self, commit_message="End of training", blocking=True, token=None, revision=None, private=None, **kwargs
    ):
        """Save, then push the encoder, processor, lock config and model card (not a wrapper module); extra keywords
        ``repo_id``, ``gated``, ``report``, ``include_mask`` (see :func:`push_trainer_to_hub`)."""
        return push_trainer_to_hub(self, commit_message, token=token, revision=revision, private=private, **kwargs)

    # Trainer internal (checked against transformers 5.25.0; public name, no documented contract): the
    # Trainer calls it at construction, and no setting makes it build its client afresh.
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

    # Private Trainer hook (checked against transformers 5.25.0): the only place a checkpoint is
    # pushed during training; the Trainer's own push would upload the mask and the optimizer state.
    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """``push_to_hub=True`` during training: nothing is pushed, whatever the ``hub_strategy``. A half-done lock
        holds most of the original weights at the positions the finished lock changes, and the difference between
        two pushed states shows those positions (found on the user's path, where a first commit held the original
        values at most of them). The lock is pushed once, finished, by ``save_model`` / ``push_to_hub``."""

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the last *complete* checkpoint under
        ``output_dir`` (one cut short by a kill or a full disk, or with a file that does not load, is skipped with a
        warning naming it), and a checkpoint made with other lock settings is refused."""
        if resume_from_checkpoint is True:
            found, damaged = checkpoint_to_resume(self.args.output_dir)
            if damaged:
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

    # Private Trainer hook (checked against transformers 5.25.0): train(resume_from_checkpoint=...)
    # restores the weights through it, and no public hook restores the lock state beside them.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Restore the encoder and the :class:`LockState` from a checkpoint of this lock (refused when incomplete or
        made with other lock settings)."""
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
            if loaded.view_generator is None:  # saved before the views' generator was: it restarts from its seed
                loaded.view_generator = self.lock_state.view_generator
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
    # every process; _internal_call (private, see PRIVATE_TRAINER_HOOKS): no push of its own from save_model
    trainer.save_model(args.output_dir, _internal_call=True)
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
