"""``EncoderLockConfig``: every knob of a lock run, as ``TrainingArguments`` fields with help text."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from transformers import TrainingArguments

from .._files import LOCK_CONFIG_FILE
from ..data.streamed import DEFAULT_LOCK_CACHE_BYTES
from ..encoders import POOLINGS
from ..probing.transforms import TRANSFORMS, TransformError, parse_transform_spec
from .adversary_heads import AdversaryConfig
from .knobs import KnobGroup, flag_fields, is_finite, is_whole
from .objectives import OBJECTIVES, InformationTermsConfig
from .selection import SCORE_FUNCTIONS
from .variants.augmentations import AugmentationConfig
from .variants.generators import GENERATORS

DEFAULT_NUM_TRAIN_EPOCHS = TrainingArguments.__dataclass_fields__["num_train_epochs"].default
Variant = Literal["supervised", "unsupervised", "zero-shot"]
VARIANTS = get_args(Variant)
AUTO_POOLINGS = "auto"  # prohibited_poolings: every pooling the encoder offers, when the objective combines them
# authorized_projection "auto": the threshold per variant, chosen on the probes' validation split of the default task
# (benchmarks/keep_levers.py and docs/VARIANTS.md): pseudo-labels and synthetic data carry less of the prohibited
# domain's class structure, so their locks need more room to move.
AUTO_PROJECTION = "auto"
NONE_WORDS = ("none", "null")  # what a flag of a field that may be None takes for None (as YAML's null)
PROJECTION_BY_VARIANT = {"supervised": 0.01, "unsupervised": 0.02, "zero-shot": 0.05}
BestModelCriterion = Literal["gap", "last"]
SelectionUnit = Literal["weight", "row"]
SELECTION_UNITS: tuple[str, ...] = get_args(SelectionUnit)
BEST_MODEL_CRITERIA = get_args(BestModelCriterion)
# The knob groups, each declared once on its own dataclass (help, default, range) and flattened into
# EncoderLockConfig under its prefix (info_*, augment_*, adversary_*): see lock/knobs.py.
KNOB_GROUPS: tuple[type[KnobGroup], ...] = (InformationTermsConfig, AugmentationConfig, AdversaryConfig)
# How the data is held and whether a finished result may be replaced, not what the lock does: free to change on resume
# (a resume refused for overwrite_output_dir was found on the user's path).
NOT_HYPERPARAMETERS = ("lock_cache_bytes", "overwrite_output_dir")
# Validation: integer fields with the smallest value a lock can run with, and number fields that must be finite and
# positive / non-negative (NaN passes no comparison, so each is checked for finiteness first).
WHOLE_MINIMUMS = {
    "num_rounds": 1,
    "weights_per_round": 1,
    "layers_per_round": 1,
    "update_steps_per_round": 1,
    "prohibited_batch_factor": 1,
    "score_batches": 1,
    "challenge_every": 0,
    "colour_map_every": 0,
    "num_pseudo_classes": 2,
    "pseudo_label_restarts": 1,
    "zero_shot_images": 16,
    "finetune_aware_steps": 0,
    "repair_steps": 0,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "lock_cache_bytes": 0,
}
POSITIVE_NUMBERS = (
    "alpha",
    "objective_eps",
    "score_eps",
    "contrastive_temperature",
    "finetune_aware_lr",
    "repair_learning_rate",
    "unprojected_learning_rate",
    "learning_rate",
)
NON_NEGATIVE_NUMBERS = (
    "finetune_aware_weight",
    "weight_decay",
    "max_authorized_drift",
)


def _transform_specs_problem(specs: Any) -> str | None:
    """Why ``prohibited_transforms`` cannot be used (the first bad entry, by name or strength), or ``None``."""
    if not isinstance(specs, (list, tuple)):
        return f"a list, got {type(specs).__name__}"
    for spec in specs:
        if not isinstance(spec, str):
            return f"text entries, got {spec!r}"
        try:
            parse_transform_spec(spec)
        except TransformError as error:
            return str(error)
    return None


def _finite_or_nan(value: Any) -> float:
    """``value`` as a float, NaN when it is not a finite number (so that every range comparison fails)."""
    return float(value) if is_finite(value) else math.nan


def _is_list(value: Any, length: int | None = None) -> bool:
    return isinstance(value, (list, tuple)) and (length is None or len(value) == length)


def _whole(name: str, value: Any, minimum: int) -> str | None:
    """The problem with an integer field, if any (``num_rounds: 2.5`` is not a number of rounds)."""
    if not is_whole(value):
        return f"{name} must be an integer >= {minimum}, got {value!r}"
    return None if value >= minimum else f"{name} must be >= {minimum}, got {value!r}"


def _number(name: str, value: Any, above: float | None = None, least: float | None = None) -> str | None:
    """The problem with a number field, if any: not finite, or not ``> above`` / ``>= least``."""
    if not is_finite(value):
        return f"{name} must be a finite number, got {value!r}"
    if above is not None and not value > above:
        return f"{name} must be > {above}, got {value!r}"
    if least is not None and not value >= least:
        return f"{name} must be >= {least}, got {value!r}"
    return None


def _regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as error:
        return f"candidate_name_patterns: {pattern!r} is not a valid regex ({error})"
    return None


# The reference research code's values (METHOD.md): N=100 weights and M=1 layer per round, alpha=1e3,
# a fresh Adam at lr 1e-2 without weight decay, 40 update steps per round, a challenge every 5 rounds,
# 20 outer epochs x 5 rounds, 10 scoring batches of 64.
REFERENCE_PRESET: dict[str, Any] = {
    "weights_per_round": 100,
    "layers_per_round": 1,
    "alpha": 1e3,
    "learning_rate": 1e-2,
    "weight_decay": 0.0,
    "update_steps_per_round": 40,
    "prohibited_batch_factor": 1,
    "challenge_every": 5,
    "num_rounds": 100,
    "score_batches": 10,
    "per_device_train_batch_size": 64,
    "score_function": "gradient_ratio",
    "objective": "paper",
    "prohibited_poolings": None,
    "candidate_blocks": None,
    "authorized_projection": None,
    "repair_steps": 0,
    "max_authorized_drift": 0.0,
}


class UnsupportedSettingError(ValueError, NotImplementedError):
    """A Trainer setting a lock cannot honour (FSDP, DeepSpeed, ``load_best_model_at_end``): a user error, refused
    before any work (the CLI exits 2)."""


def check_supported_settings(args: TrainingArguments) -> None:
    """Refuse, before any work, the Trainer settings a lock cannot honour: sharded engines (FSDP, DeepSpeed, also
    when ``accelerate launch`` asks for them through the environment), processes that would each lock alone, and
    ``load_best_model_at_end``."""
    for engine, enabled in (("FSDP", args.fsdp), ("DeepSpeed", args.deepspeed)):
        if enabled or os.environ.get(f"ACCELERATE_USE_{engine.upper()}", "false").lower() in ("1", "true", "yes"):
            raise UnsupportedSettingError(
                f"EncoderLockTrainer does not support {engine}: weight selection and the exact masked updates need "
                "whole, unsharded encoder weights on every rank. Use DDP (accelerate distributed_type MULTI_GPU) "
                "or one process."
            )
    _check_processes_joined(args)
    if args.load_best_model_at_end:
        raise UnsupportedSettingError(
            "load_best_model_at_end is not used by a lock: the kept encoder is chosen by best_model_criterion "
            "('gap': the best fresh-head validation gap, restored at the end of train()); set "
            "load_best_model_at_end=False"
        )


# What a launcher that started several processes sets (torchrun, mpirun's flavours): without any, there is one.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def _check_processes_joined(args: TrainingArguments) -> None:
    """Refuse a launch whose processes do not form one run: each would lock alone (a different global batch than
    asked for, and several processes writing the same folder), or only one was started where several were asked."""
    launched = int(os.environ.get("WORLD_SIZE") or 1)
    if launched > 1 and args.world_size == 1:
        raise UnsupportedSettingError(
            f"{launched} processes were started (WORLD_SIZE={launched}), but each would lock alone (world_size 1): "
            "on a machine without GPUs the processes join only on the CPU. Set ACCELERATE_USE_CPU=true (or "
            "--use_cpu true): ACCELERATE_USE_CPU=true torchrun --nproc_per_node N ..."
        )
    by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ  # set by every `accelerate launch`
    asked_for_more = "MASTER_ADDR" in os.environ  # accelerate sets it only for --num_processes > 1
    if (
        by_accelerate
        and asked_for_more
        and args.world_size == 1
        and not any(map(os.environ.get, _WORLD_SIZE_VARIABLES))
    ):
        raise UnsupportedSettingError(
            "`accelerate launch` was asked for several processes but started one: with --cpu (or on a machine "
            "without GPUs) it starts several only under mpirun. Start them with torchrun instead: "
            "ACCELERATE_USE_CPU=true torchrun --nproc_per_node N <script> ..., or drop --num_processes"
        )


@dataclass
class EncoderLockConfig(flag_fields(*KNOB_GROUPS), TrainingArguments):
    """Arguments of an EncoderLock run.

    Inherits every ``transformers.TrainingArguments`` field (output folder, batch size, seed, logging, mixed
    precision, ...). One optimiser step of the Trainer is one masked update step; a *round* is
    ``update_steps_per_round`` steps, preceded by weight selection; the run lasts ``num_rounds`` rounds
    (``max_steps`` is derived from them). Use :meth:`reference` for the paper's reference values.

    The knobs of the information objective, the contrastive objective's augmentations and the self-challenge's
    adversary heads are declared once, on their own dataclasses (help, default, range), and appear here as flat
    fields under a prefix: add or change one there, not here (:mod:`hf_encoderlock.lock.knobs`).

    Information objective (``info_*``): :class:`~hf_encoderlock.lock.objectives.InformationTermsConfig`, the
        weights of its R^2 / MMD / soft-kNN terms and of the authorized side, their ridge, bandwidths, temperature
        and whitening.
    Augmentations (``augment_*``): :class:`~hf_encoderlock.lock.variants.augmentations.AugmentationConfig`, the
        strengths of the contrastive objective's augmented views.
    Self-challenge adversary (``adversary_*``): :class:`~hf_encoderlock.lock.adversary_heads.AdversaryConfig`, the
        ensemble of fresh prohibited heads a challenge fits (kinds, seeds, learning rates, epochs, width).
    """

    knob_groups: ClassVar[tuple[type[KnobGroup], ...]] = KNOB_GROUPS  # validated with the fields below

    # --- what is locked ----------------------------------------------------------------------------------
    variant: Variant = field(
        default="supervised",
        metadata={
            "help": f"Lock variant: one of {VARIANTS}. supervised: labelled prohibited data; unsupervised: prohibited "
            "images only (labels are never read; pseudo-labels come from clustering the unlocked encoder's "
            "features); zero-shot: no prohibited data, synthetic prohibited-like data from `zero_shot_generators`."
        },
    )
    objective: str = field(default="information", metadata={"help": f"Training objective: one of {tuple(OBJECTIVES)}."})
    alpha: float = field(default=1e3, metadata={"help": "alpha in the paper's loss L_A + log(1 + alpha * L_A / L_P)."})
    objective_eps: float = field(default=1e-8, metadata={"help": "Guard against division by zero in objectives."})
    prohibited_poolings: list[str] | None = field(
        default_factory=lambda: [AUTO_POOLINGS],
        metadata={
            "help": "Poolings (e.g. cls mean) whose prohibited features are concatenated for the objective's "
            "prohibited terms, from one backbone pass, since probes attack every pooling. 'auto': every pooling the "
            "encoder offers when the objective combines poolings (information, contrastive), else its default one; "
            "None: the encoder's default pooling only."
        },
    )

    # --- unsupervised and zero-shot variants --------------------------------------------------------------
    num_pseudo_classes: int = field(
        default=10,
        metadata={
            "help": "variant='unsupervised' (and unlabelled zero-shot data): k of the k-means clustering of the "
            "unlocked encoder's prohibited features whose clusters stand in for the missing labels."
        },
    )
    pseudo_label_restarts: int = field(default=4, metadata={"help": "k-means restarts for the pseudo-labels."})
    contrastive_temperature: float = field(
        default=0.8, metadata={"help": "objective='contrastive': InfoNCE temperature (reference: 0.8)."}
    )
    zero_shot_generators: list[str] = field(
        default_factory=lambda: ["shifts", "shapes", "glyphs"],
        metadata={
            "help": "variant='zero-shot': generators of synthetic prohibited-like data (see "
            "hf_encoderlock.lock.variants.generators.GENERATORS): shifts (colour/texture/background/frequency "
            "shifts of the authorized images), shapes (procedural geometric shapes), glyphs (rendered symbols)."
        },
    )
    zero_shot_images: int = field(
        default=1500,
        metadata={"help": "variant='zero-shot': synthetic images generated in all (split over generators)."},
    )

    finetune_aware_steps: int = field(
        default=0,
        metadata={
            "help": "Fine-tuning-aware lock (beyond the paper; 0: off): each update also evaluates the objective "
            "after this many simulated attacker fine-tuning steps (first-order, SOPHON-style: gradient steps of the "
            "adversary head's cross-entropy on the prohibited batch over every encoder weight, each the size of "
            "Adam's first step), so the lock also "
            "holds after an attacker fine-tunes. Single-process; not with objective='contrastive'."
        },
    )
    finetune_aware_lr: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of the simulated attacker: each step moves every weight by lr * sign(grad)."},
    )
    finetune_aware_weight: float = field(
        default=1.0, metadata={"help": "Weight of the objective after simulated fine-tuning in the update's loss."}
    )
    ddp_global_batch: bool = field(
        default=True,
        metadata={
            "help": "Under several processes, gather every rank's features so the objective (which is not a "
            "per-image mean) sees the global batch: the same result as one process with the same global batch. "
            "False: each rank's objective on its own batch (the same as one process with gradient accumulation)."
        },
    )

    # --- weight selection ---------------------------------------------------------------------------------
    num_rounds: int = field(default=20, metadata={"help": "Selection + update rounds in the run."})
    weights_per_round: int = field(default=510, metadata={"help": "N: weights newly selected per round."})
    weight_budget_share: float | None = field(
        default=None,
        metadata={
            "help": "The budget as a share of the candidate weights (those candidate_blocks and "
            "candidate_module_types allow), so small and large encoders get a budget of the same relative size: "
            "when set, it replaces weights_per_round with floor(share x candidate weights / num_rounds) (at least 1), "
            "resolved once the encoder is known and saved as weights_per_round with the lock. 0.029 gives the "
            "default 510 a round on the built-in victim. None: weights_per_round as given."
        },
    )
    layers_per_round: int = field(default=2, metadata={"help": "M: layers whose weights compete each round."})
    update_steps_per_round: int = field(default=10, metadata={"help": "Masked optimiser steps after each selection."})
    prohibited_batch_factor: int = field(
        default=1,
        metadata={
            "help": "Prohibited images per authorized image in an update batch: the prohibited side of a batch holds "
            "this times per_device_train_batch_size images (lowered, with a warning, when the lock data hold fewer "
            "than one such batch). The information measures are batch statistics, and a larger prohibited batch "
            "estimates them, and their gradient, with less noise, at the cost of a longer step: 2 removed a little "
            "more on the default task, but the main job no longer fit five minutes on two cores "
            "(docs/DEFAULT_LOCK.md, 'Prohibited batch and measures')."
        },
    )
    repair_steps: int = field(
        default=20,
        metadata={
            "help": "Masked optimiser steps after the last round on the authorized side alone (its head's "
            "cross-entropy and the feature preservation term), not projected and from fresh optimiser moments: they "
            "win back what a projected lock's leaks cost the authorized domain, without looking at the prohibited "
            "one. When authorized_projection='auto' dropped the projection, they continue the lock instead (a repair "
            "would undo an unprojected lock). 0: none."
        },
    )
    repair_learning_rate: float = field(
        default=0.01,
        metadata={
            "help": "Learning rate of the repair steps (Adam moves each weight by about this much a step, and these "
            "steps are not projected, so it is kept well below learning_rate)."
        },
    )
    weight_bound: float | None = field(
        default=None,
        metadata={
            "help": "Bounded updates: after every step, each changed weight is clamped to its tensor's median plus or "
            "minus this many robust standard deviations (1.4826 x MAD, of the unlocked tensor; widened to the "
            "weight's own unlocked value), so no changed weight stands out of its tensor's distribution (an attacker "
            "resets or clips such outliers without data). Unchanged weights are never touched. The weights the bound "
            "stops share one value per tensor edge unless bound_jitter spreads them. None: unbounded."
        },
    )
    bound_jitter: float = field(
        default=0.0,
        metadata={
            "help": "With weight_bound: each changed weight's edge is drawn (seeded, per entry) up to this share of "
            "the bound inside it, so the weights the bound stops spread over a band instead of piling up on one "
            "value, which shows an attacker part of the mask without data (encoderlock audit names such tensors). "
            "0: one edge per tensor side. On the default task 0.1 cost the bounded lock a few points of its worst "
            "case at three lock seeds of three (docs/THREAT_MODEL.md), so it is off."
        },
    )
    prohibited_transforms: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Input transformations an attacker who knows the method would try (names from "
            "hf_encoderlock.probing.transforms.TRANSFORMS, each optionally 'name:strength', e.g. 'greyscale' or "
            "'permute_channels:5'): each adds a transformed copy of every prohibited lock image, with its label, so "
            "the lock's updates and its adversaries see those images too. An image and its copies go to the same lock "
            "or validation part. []: none."
        },
    )
    prohibited_view_batches: bool = field(
        default=False,
        metadata={
            "help": "With prohibited_transforms: every prohibited batch (updates and selection scores) shows its "
            "images under one view, the originals or one transform, drawn per batch, as an attacker's probe sees "
            "them; the information measures are then taken within a view. False: a batch mixes the views (its "
            "measures can then fall by setting the views apart rather than by removing class information from each)."
        },
    )
    colour_map_every: int = field(
        default=0,
        metadata={
            "help": "Self-challenge against the attacker's learned colour map (beyond the paper; 0: off): every this "
            "many rounds, at the round start, a per-pixel colour map (hf_encoderlock.probing.learned_transforms, the "
            "adaptive attacker's colour_map) is fitted with a linear head through the current encoder on up to 1,024 "
            "of the prohibited lock images (without their prohibited_transforms copies, as the attacker fits it on its "
            "own images), and from then on half of every prohibited batch (updates and selection) "
            "is shown under it, so the lock also removes what that map makes readable. Costs one fit (a few epochs "
            "through the encoder) per refit."
        },
    )
    max_authorized_drift: float = field(
        default=0.1,
        metadata={
            "help": "Drift guard of projected updates: when a step's authorized feature drift (mean squared change "
            "against the unlocked encoder's features, relative to their variance) exceeds this, the step's learning "
            "rate is scaled by max_authorized_drift / drift. A projected lock cannot pull drift back (the "
            "preservation term's gradient is what the projection removes), so at a high learning rate it can run "
            "away from the authorized features. Only objective='information' with info_preserve_weight > 0 measures "
            "the drift; other objectives and unprojected updates are not guarded. 0: off."
        },
    )
    score_function: str = field(
        default="gradient_ratio",
        metadata={"help": f"Weight score: one of {tuple(SCORE_FUNCTIONS)} (paper: gradient_ratio)."},
    )
    selection_unit: SelectionUnit = field(
        default="weight",
        metadata={
            "help": "What selection ranks: 'weight' (each entry by its own score, the paper's) or 'row' (each output "
            "row of a weight matrix or kernel by its entries' mean score, whole rows taken, except the round's last "
            "one where weights_per_round runs out mid-row): a row's entries then move together, so a bounded "
            "update (weight_bound) may shift that output further while each entry stays inside its tensor's "
            "range. On the default task it removed no more than 'weight' (docs/THREAT_MODEL.md)."
        },
    )
    bound_aware_scores: bool = field(
        default=False,
        metadata={
            "help": "With weight_bound: each weight's score is multiplied by its room, how far its bounded range lets "
            "the update move it on the prohibited term, so selection prefers weights whose capped move changes that "
            "term the most (to first order) over weights the bound leaves little to move. Needs weight_bound. On the "
            "default task it helped together with score_function='prohibited_gradient' only "
            "(examples/configs/bounded.yaml; docs/THREAT_MODEL.md)."
        },
    )
    score_eps: float = field(default=1e-8, metadata={"help": "eps in |dL_P/dw| / (|dL_A/dw| + eps)."})
    score_batches: int = field(
        default=1, metadata={"help": "Batches of each domain used to score weights (reference: 10 of 64)."}
    )
    candidate_module_types: list[str] = field(
        default_factory=lambda: ["Linear", "Conv2d"],
        metadata={"help": "Module types whose weight matrices/kernels may be selected (no biases, no norms)."},
    )
    candidate_name_patterns: list[str] | None = field(
        default=None, metadata={"help": "Optional regexes a candidate weight's qualified name must match."}
    )
    candidate_blocks: list[int] | None = field(
        default_factory=lambda: [-1, 0, 1],
        metadata={"help": "Optional block indices to select from (the patch embedding is block -1)."},
    )
    authorized_projection: str | None = field(
        default=AUTO_PROJECTION,
        metadata={
            "help": "Every masked update is projected, weight row by weight row within its selected entries, off the "
            "directions in which the unlocked encoder's authorized inputs to that layer hold more than this multiple "
            "of the layer's mean per-coordinate energy, so authorized features barely move (a number >= 0; 0: only "
            "directions they never use). 'auto': 0.01 (supervised), 0.02 (unsupervised), 0.05 (zero-shot), and "
            "dropped at the first round when it leaves the prohibited objective's gradient no room (the two domains "
            "use the same input directions, e.g. a colour authorized domain): the lock then runs unprojected at "
            "unprojected_learning_rate. None or 'none': off. Linear and Conv2d weights; keeps a frozen copy of the "
            "encoder."
        },
    )
    unprojected_learning_rate: float = field(
        default=0.01,
        metadata={
            "help": "Learning rate of the masked updates once authorized_projection='auto' has dropped the "
            "projection: unprojected updates move the authorized features as well, so they need a smaller rate "
            "than learning_rate."
        },
    )
    magnitude_gate: float | None = field(
        default=None,
        metadata={"help": "If set, only weights with |w| >= this quantile of their layer's |w| are eligible."},
    )

    # --- self-challenge -----------------------------------------------------------------------------------
    challenge_every: int = field(
        default=0, metadata={"help": "Train fresh adversary heads every this many rounds (0: only at start)."}
    )
    validation_fraction: float = field(
        default=0.2,
        metadata={"help": "Share of each domain's lock data held out to pick heads and the best encoder."},
    )
    challenge_max_images: int | None = field(
        default=4096,
        metadata={
            "help": "Images of each lock and validation split that a self-challenge encodes and fits heads on (a "
            "fixed seeded sample, drawn once; None: all): bounds a challenge's time and memory on large domains."
        },
    )
    lock_cache_bytes: int = field(
        default=DEFAULT_LOCK_CACHE_BYTES,
        metadata={
            "help": "Bytes of preprocessed pixels a domain's lock images may take in memory (faster for small images); "
            "a larger domain is decoded and preprocessed per batch from its dataset, so memory does not grow with its "
            "size (0: always). Does not change results."
        },
    )
    best_model_criterion: BestModelCriterion = field(
        default="gap",
        metadata={
            "help": "How the kept encoder is chosen: 'gap' = fresh-head validation accuracy authorized minus "
            "prohibited (higher is better), 'last' = the final encoder."
        },
    )

    # --- outputs --------------------------------------------------------------------------------------------
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow output_dir to hold files this package did not write, or a finished lock to replace. A "
            "user's files are never deleted either way (they stay beside the new lock); without this flag such a "
            "folder is refused before any work."
        },
    )

    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Resume an interrupted lock: a checkpoint-N folder, or 'true' for the newest complete one under "
            "output_dir/checkpoints (checkpoints are kept only with a save_strategy). The lock's settings must be "
            "those the checkpoint was written with; the main job refuses a resume with nothing to resume before any "
            "work. None: a fresh lock."
        },
    )

    # --- publishing -----------------------------------------------------------------------------------------
    hub_gated: str | None = field(
        default=None,
        metadata={
            "help": "Gate the Hub repository when pushing (push_to_hub, trainer.push_to_hub): 'auto' (access after "
            "acknowledging the prohibited uses) or 'manual' (the owner approves each request); None: not gated. The "
            "mask, lock state and checkpoints are never uploaded."
        },
    )

    hub_strategy: str = field(
        default="end",
        metadata={
            "help": "With push_to_hub: a lock is pushed once, finished (save_model or push_to_hub); other values are "
            "accepted as in TrainingArguments but push nothing at checkpoints, since a half-done lock would publish "
            "original weights where the lock changes them."
        },
    )

    # --- Trainer defaults that suit a lock ---------------------------------------------------------------
    output_dir: str | None = field(
        default="encoderlock_output", metadata={"help": "Where the lock's outputs and checkpoints go."}
    )
    learning_rate: float = field(default=0.3, metadata={"help": "Learning rate of the masked weight updates."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the masked weight updates."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Scheduler of the masked updates."})
    per_device_train_batch_size: int = field(
        default=256,
        metadata={"help": "Authorized images per step (the prohibited side: prohibited_batch_factor times as many)."},
    )
    per_device_eval_batch_size: int = field(
        default=512,
        metadata={"help": "Images per forward pass when encoding lock data (self-challenges and evaluate)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: lock batches carry two domains the model does not name."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every this many update steps."})
    save_strategy: str = field(
        default="no",
        metadata={
            "help": "When to keep a checkpoint under output_dir/checkpoints: 'no' (an interrupted lock starts again), "
            "'steps' (every save_steps update steps) or 'epoch', as in TrainingArguments. Checkpoints hold the mask "
            "and lock state: private (folders readable by the owner only) and never uploaded."
        },
    )
    dataloader_drop_last: bool = field(
        default=True,
        metadata={
            "help": "Drop the short last batch of each pass (batch statistics such as the information objective's "
            "R^2 are biased on small batches); ignored when the lock data hold less than one batch."
        },
    )

    def __post_init__(self) -> None:
        self._read_projection()
        self._check_choices()
        self._derive_length()
        super().__post_init__()

    def _read_projection(self) -> None:
        """A number given as text (a command-line flag) becomes a float; 'none' becomes None."""
        value = self.authorized_projection
        if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
            self.authorized_projection = None
        elif isinstance(value, str) and value != AUTO_PROJECTION:
            try:
                self.authorized_projection = float(value)
            except ValueError:
                pass  # refused by name in _check_choices

    def projection_threshold(self) -> float | None:
        """The ``authorized_projection`` threshold this lock uses (``'auto'`` resolved for ``variant``), or None."""
        if self.authorized_projection == AUTO_PROJECTION:
            return PROJECTION_BY_VARIANT[self.variant]
        return self.authorized_projection

    @property
    def lock_steps(self) -> int:
        """Update steps of the rounds (``num_rounds x update_steps_per_round``); the repair steps follow them."""
        return self.num_rounds * self.update_steps_per_round

    def _derive_length(self) -> None:
        """A lock lasts ``num_rounds x update_steps_per_round + repair_steps`` update steps: ``max_steps`` is derived,
        and a value that disagrees (or a changed ``num_train_epochs``) is refused rather than silently replaced."""
        steps = self.lock_steps + self.repair_steps
        if self.max_steps is not None and self.max_steps > 0 and self.max_steps != steps:
            raise ValueError(
                f"invalid EncoderLockConfig: max_steps={self.max_steps}, but a lock lasts num_rounds x "
                f"update_steps_per_round + repair_steps = {self.num_rounds} x {self.update_steps_per_round} + "
                f"{self.repair_steps} = {steps} update steps; set num_rounds / update_steps_per_round / repair_steps "
                "and leave max_steps unset (-1)"
            )
        if self.num_train_epochs != DEFAULT_NUM_TRAIN_EPOCHS:
            raise ValueError(
                f"invalid EncoderLockConfig: num_train_epochs={self.num_train_epochs} is not used by a lock, whose "
                "length is num_rounds x update_steps_per_round update steps; leave num_train_epochs unset"
            )
        self.max_steps = steps

    def _check_choices(self) -> None:
        """Refuse, at construction and naming each field, every value a lock cannot run with (NaN or negative rates,
        fractional counts, empty lists, unknown names, bad regexes), all problems in one message."""
        objective = OBJECTIVES.get(self.objective) if isinstance(self.objective, str) else None
        checks = [
            (self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}"),
            (objective is not None, f"objective must be one of {tuple(OBJECTIVES)}, got {self.objective!r}"),
            (
                isinstance(self.score_function, str) and self.score_function in SCORE_FUNCTIONS,
                f"score_function must be one of {tuple(SCORE_FUNCTIONS)}, got {self.score_function!r}",
            ),
            (
                not self.bound_aware_scores or self.weight_bound is not None,
                "bound_aware_scores needs weight_bound (the room it scores by is the bounded range)",
            ),
            (
                not self.bound_jitter or self.weight_bound is not None,
                "bound_jitter needs weight_bound (it spreads the bound's edges)",
            ),
            (
                0.0 <= _finite_or_nan(self.bound_jitter) < 1.0,
                f"bound_jitter must be in [0, 1), got {self.bound_jitter!r}",
            ),
            (
                self.selection_unit in SELECTION_UNITS,
                f"selection_unit must be one of {SELECTION_UNITS}, got {self.selection_unit!r}",
            ),
            (
                self.best_model_criterion in BEST_MODEL_CRITERIA,
                f"best_model_criterion must be one of {BEST_MODEL_CRITERIA}, got {self.best_model_criterion!r}",
            ),
            (
                self.hub_gated in (None, "auto", "manual"),
                f"hub_gated must be None, 'auto' or 'manual', got {self.hub_gated!r}",
            ),
            (0.0 < _finite_or_nan(self.validation_fraction) < 1.0, "validation_fraction must be in (0, 1)"),
            (
                self.challenge_max_images is None
                or _whole("challenge_max_images", self.challenge_max_images, 8) is None,
                f"challenge_max_images must be None or a whole number >= 8, got {self.challenge_max_images!r}",
            ),
            (
                self.authorized_projection in (None, AUTO_PROJECTION)
                or (
                    not isinstance(self.authorized_projection, str) and _finite_or_nan(self.authorized_projection) >= 0
                ),
                f"authorized_projection must be 'auto', None or a number >= 0, got {self.authorized_projection!r}",
            ),
            (
                self.magnitude_gate is None or 0.0 <= _finite_or_nan(self.magnitude_gate) < 1.0,
                f"magnitude_gate must be None or in [0, 1), got {self.magnitude_gate!r}",
            ),
            (
                (transforms_problem := _transform_specs_problem(self.prohibited_transforms)) is None,
                f"prohibited_transforms must be a list of 'name' or 'name:strength' with a name from "
                f"{sorted(TRANSFORMS)}: {transforms_problem}",
            ),
            (
                not self.prohibited_view_batches or bool(self.prohibited_transforms),
                "prohibited_view_batches needs prohibited_transforms (without copies every batch shows one view)",
            ),
            (
                self.weight_budget_share is None or 0.0 < _finite_or_nan(self.weight_budget_share) <= 1.0,
                f"weight_budget_share must be None or in (0, 1], got {self.weight_budget_share!r}",
            ),
            (
                self.weight_bound is None or _finite_or_nan(self.weight_bound) > 0.0,
                f"weight_bound must be None or a number > 0 (robust standard deviations), got {self.weight_bound!r}",
            ),
            (
                objective is None
                or not self.prohibited_poolings
                or self.prohibited_poolings == [AUTO_POOLINGS]
                or objective.combines_poolings,
                "prohibited_poolings needs objective='information' or 'contrastive' "
                "(the paper's adversary head sees one pooling)",
            ),
            (
                not (self.finetune_aware_steps and self.objective == "contrastive"),
                "finetune_aware_steps does not support objective='contrastive'",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        problems += [
            problem for name, low in WHOLE_MINIMUMS.items() if (problem := _whole(name, getattr(self, name), low))
        ]
        problems += [problem for name in POSITIVE_NUMBERS if (problem := _number(name, getattr(self, name), above=0))]
        problems += [
            problem for name in NON_NEGATIVE_NUMBERS if (problem := _number(name, getattr(self, name), least=0))
        ]
        problems += self._list_problems()
        problems += [problem for group in self.knob_groups for problem in group.problems(self)]
        if problems:
            raise ValueError("invalid EncoderLockConfig: " + "; ".join(problems))

    def _list_problems(self) -> list[str]:
        """The list-valued fields: non-empty where a lock needs one, with known names and working values."""
        problems = []
        generators = self.zero_shot_generators
        if not _is_list(generators) or not generators or not all(g in GENERATORS for g in generators):
            problems.append(
                f"zero_shot_generators must be a non-empty list from {tuple(GENERATORS)}, got {generators!r}"
            )
        types = self.candidate_module_types
        if not _is_list(types) or not types or not all(isinstance(t, str) and t for t in types):
            problems.append(f"candidate_module_types must be a non-empty list of module type names, got {types!r}")
        patterns = self.candidate_name_patterns
        if patterns is not None and not (_is_list(patterns) and all(isinstance(p, str) for p in patterns)):
            problems.append(f"candidate_name_patterns must be None or a list of regexes, got {patterns!r}")
        elif patterns:
            problems += [problem for pattern in patterns if (problem := _regex_problem(pattern))]
        blocks = self.candidate_blocks
        if blocks is not None and not (_is_list(blocks) and all(is_whole(b) and b >= -1 for b in blocks)):
            problems.append(f"candidate_blocks must be None or a list of block indices >= -1, got {blocks!r}")
        poolings = self.prohibited_poolings
        if poolings is not None and not (
            _is_list(poolings)
            and all(p in POOLINGS for p in poolings)
            and (AUTO_POOLINGS not in poolings or poolings == [AUTO_POOLINGS])
        ):
            problems.append(
                f"prohibited_poolings must be None, [{AUTO_POOLINGS!r}] or a list from {POOLINGS[1:]}, got {poolings!r}"
            )
        return problems

    @classmethod
    def reference(cls, **overrides: Any) -> EncoderLockConfig:
        """The research code's reference hyper-parameters (N=100, M=1, alpha=1e3, update lr 1e-2, ...)."""
        return cls(**{**REFERENCE_PRESET, **overrides})

    @classmethod
    def from_pretrained(cls, locked: str | os.PathLike, **overrides: Any) -> EncoderLockConfig:
        """The settings a locked encoder folder was made with (its ``encoderlock_config.json``), to rerun the lock
        the same way; ``overrides`` (e.g. ``output_dir``) win."""
        path = Path(locked) / LOCK_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{locked} holds no {LOCK_CONFIG_FILE}: it is not a locked encoder folder")
        summary = json.loads(path.read_text(encoding="utf-8"))
        saved = dict(summary.get("hyperparameters", {}))
        known = {spec.name for spec in dataclasses.fields(cls) if spec.init}
        values = {name: value for name, value in saved.items() if name in known}
        for key in ("variant", "seed"):  # also recorded at the top level of encoderlock_config.json
            if key in summary:
                values[key] = summary[key]
        return cls(**{**values, **overrides})

    def lock_hyperparameters(self) -> dict[str, Any]:
        """The lock-specific fields (not the generic Trainer ones), for ``encoderlock_config.json``."""
        own = {
            spec.name
            for spec in dataclasses.fields(self)  # not knob_groups (a class variable)
            if spec.name not in TrainingArguments.__dataclass_fields__ and spec.name not in NOT_HYPERPARAMETERS
        }
        shared = ("learning_rate", "weight_decay", "per_device_train_batch_size", "seed", "max_steps")
        values = {name: getattr(self, name) for name in sorted(own | set(shared))}
        values["authorized_projection_threshold"] = self.projection_threshold()  # what "auto" meant for this variant
        return dict(sorted(values.items()))
