"""hf_encoderlock: EncoderLock (NDSS 2025, "Probe-Me-Not") for the Hugging Face ecosystem.

Lock a pre-trained vision encoder so that probing it (a fresh head on its frozen features) keeps working on
authorized domains and fails on prohibited ones, while changing only a tiny set of weights.
"""

__version__ = "0.1.0.dev0"

from .callbacks import SelfChallengeCallback, WeightSelectionCallback
from .config import EncoderLockConfig
from .domains import (
    BUILTIN_DOMAINS,
    DomainError,
    DomainSpec,
    describe_domain,
    domain_from_arrays,
    domain_from_folder,
    load_domain,
    train_validation_split,
)
from .encoders import EncoderAdapter, EncoderError, load_encoder, tiny_vit_encoder, vit_image_processor
from .heads import HeadTrainingConfig, TrainedHead, best_head, train_heads
from .lock_data import LockDataError
from .masking import MaskedParameterGuard, changed_entries, snapshot_state
from .objectives import LockHeads, LockObjective, ObjectiveTerms, PaperObjective, build_objective
from .selection import (
    SCORE_FUNCTIONS,
    compute_scores,
    load_mask,
    mask_stats,
    merge_masks,
    save_mask,
    select_candidate_parameters,
    select_top_weights,
)
from .trainer import EncoderLockTrainer
from .victim import VictimConfig, load_victim, pretrain_victim, victim_random_twin

__all__ = [
    "BUILTIN_DOMAINS",
    "SCORE_FUNCTIONS",
    "DomainError",
    "DomainSpec",
    "EncoderAdapter",
    "EncoderError",
    "EncoderLockConfig",
    "EncoderLockTrainer",
    "HeadTrainingConfig",
    "LockDataError",
    "LockHeads",
    "LockObjective",
    "MaskedParameterGuard",
    "ObjectiveTerms",
    "PaperObjective",
    "SelfChallengeCallback",
    "TrainedHead",
    "VictimConfig",
    "WeightSelectionCallback",
    "best_head",
    "build_objective",
    "changed_entries",
    "compute_scores",
    "describe_domain",
    "domain_from_arrays",
    "domain_from_folder",
    "load_domain",
    "load_encoder",
    "load_mask",
    "load_victim",
    "mask_stats",
    "merge_masks",
    "pretrain_victim",
    "save_mask",
    "select_candidate_parameters",
    "select_top_weights",
    "snapshot_state",
    "tiny_vit_encoder",
    "train_heads",
    "train_validation_split",
    "victim_random_twin",
    "vit_image_processor",
]
