"""hf_encoderlock: EncoderLock (NDSS 2025, "Probe-Me-Not") for the Hugging Face ecosystem.

Lock a pre-trained vision encoder so that probing it (a fresh head on its frozen features) keeps working on
authorized domains and fails on prohibited ones, while changing only a tiny set of weights.

Names are imported lazily (on first use), so ``import hf_encoderlock`` and the ``encoderlock`` CLI start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "probing.attacks": ("AttackConfig", "AttackError", "AttackReport", "learning_curve_auc", "run_attack_suite"),
    "probing.adaptive": ("AdaptiveConfig", "AdaptiveError", "AdaptiveReport", "run_adaptive_suite"),
    "probing.sanitize": ("SANITIZERS", "count_outliers", "sanitize_module"),
    "probing.transforms": ("TRANSFORMS", "transformed_encoder"),
    "audit": ("AuditError", "AuditReport", "audit_locked"),
    "lock.variants.augmentations": ("AugmentationConfig", "augmented_view"),
    "lock.callbacks": ("LockRoundCallback",),
    "lock.config": ("EncoderLockConfig",),
    "lock.objectives.contrastive": ("ContrastiveObjective", "info_nce"),
    "data.domains": (
        "BUILTIN_DOMAINS",
        "DomainError",
        "DomainSpec",
        "describe_domain",
        "domain_from_arrays",
        "domain_from_folder",
        "load_domain",
        "train_validation_split",
    ),
    "encoders": ("EncoderAdapter", "EncoderError", "load_encoder", "tiny_vit_encoder", "vit_image_processor"),
    "experiment": ("LockExperimentArguments", "run_lock_experiment"),
    "probing.features": ("extract_features",),
    "lock.variants.generators": (
        "GENERATORS",
        "DomainShiftGenerator",
        "GlyphGenerator",
        "ImageGenerator",
        "ShapeGenerator",
        "TextToImageGenerator",
        "generate_prohibited",
    ),
    "probing.heads": ("HeadTrainingConfig", "TrainedHead", "accuracy", "best_head", "train_head_groups", "train_heads"),
    "hub.push": ("load_locked", "push_locked_to_hub"),
    "hub.locked": ("LockedEncoder",),
    "hub.signing": ("sign_locked", "verify_signature"),
    "lock.objectives.information": ("InformationObjective", "InformationTermsConfig"),
    "data.lock_tensors": ("LockDataError", "combine_labelled_domains"),
    "probing.lock_report": ("build_lock_report", "lock_report_markdown", "plot_lock_report"),
    "lock.masking": ("MaskedParameterGuard", "changed_entries", "snapshot_state"),
    "hub.authorization": ("Authorization", "LockVerificationError"),
    "hub.card": ("EncoderLockCardData", "render_model_card", "write_model_card"),
    "lock.objectives": (
        "OBJECTIVES",
        "LockHeads",
        "LockObjective",
        "ObjectiveTerms",
        "PaperObjective",
        "build_objective",
    ),
    "probing.suite": ("ProbeConfig", "load_domains", "run_probe_suite"),
    "lock.variants.pseudo_labels": ("cluster_pseudo_labels",),
    "probing.probe_report": ("ProbeReport", "load_encoderlock_metric", "lock_measures", "make_compute_metrics"),
    "lock.selection": (
        "SCORE_FUNCTIONS",
        "compute_scores",
        "load_mask",
        "mask_stats",
        "merge_masks",
        "save_mask",
        "select_candidate_parameters",
        "select_top_weights",
    ),
    "lock.state": ("LockState",),
    "lock.trainer": ("EncoderLockTrainer", "NonFiniteLossError", "push_trainer_to_hub"),
    "victim": ("VictimConfig", "load_victim", "pretrain_victim", "victim_random_twin"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_encoderlock' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .encoders import EncoderAdapter, load_encoder  # noqa: F401
    from .experiment import LockExperimentArguments, run_lock_experiment  # noqa: F401
    from .hub.locked import LockedEncoder  # noqa: F401
    from .hub.push import load_locked, push_locked_to_hub  # noqa: F401
    from .lock.callbacks import LockRoundCallback  # noqa: F401
    from .lock.config import EncoderLockConfig  # noqa: F401
    from .lock.trainer import EncoderLockTrainer  # noqa: F401
    from .probing.adaptive import AdaptiveConfig, run_adaptive_suite  # noqa: F401
    from .probing.suite import ProbeConfig, run_probe_suite  # noqa: F401
