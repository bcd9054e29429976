"""Every file name and format tag the package reads or writes, in one module that imports nothing of ours.

Kept apart so that the trainer, the Hub code, the audit and the CLI can all name the same files without importing
each other (the same role as ``peft.utils.constants``). The names transformers writes come from its own constants
(``transformers.utils``); those of ``transformers.trainer`` are spelled out, because importing that module (or
``transformers.trainer_utils``) here would load the whole Trainer stack into every command, and
``tests/test_files.py`` checks them against transformers'.
"""

from __future__ import annotations

from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

# ----------------------------------------------------------------------------------------- a locked encoder folder
LOCK_CONFIG_FILE = "encoderlock_config.json"  # how the lock was made: domains, variant, mask size, versions
LOCK_CONFIG_FORMAT = "encoderlock/v1"
MASK_FILE = "encoderlock_mask.safetensors"  # the changed weights: private, pushed only when asked
CARD_FILE = "README.md"  # the model card
CARD_FORMAT = "encoderlock-card/v1"
MODEL_CONFIG_FILE = CONFIG_NAME  # written by transformers' save_pretrained
MODEL_WEIGHTS_FILE = SAFE_WEIGHTS_NAME
MODEL_WEIGHTS_INDEX_FILE = SAFE_WEIGHTS_INDEX_NAME  # a sharded save's index
MODEL_WEIGHTS_SHARDS = "model-*-of-*.safetensors"  # a sharded save's pieces (glob; transformers has no constant)
PROCESSOR_CONFIG_FILE = IMAGE_PROCESSOR_NAME  # written by an image processor's save_pretrained
# A plain torch module (no transformers config) is saved as its state dict in MODEL_WEIGHTS_FILE plus this file.
PLAIN_MODULE_CONFIG_FILE = "encoderlock_module.json"
PLAIN_MODULE_FORMAT = "encoderlock-module/v1"
# ------------------------------------------------------------------------ transformers.trainer's (see the docstring)
PREFIX_CHECKPOINT_DIR = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
CHECKPOINT_PREFIX = f"{PREFIX_CHECKPOINT_DIR}-"  # a Trainer checkpoint folder is checkpoint-<global step>
TRAINER_STATE_FILE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME
TRAINING_ARGS_FILE = "training_args.bin"  # TRAINING_ARGS_NAME
OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE = "optimizer.pt", "scheduler.pt", "scaler.pt"  # OPTIMIZER_NAME, ...
# Files a Trainer checkpoint holds besides the model: never counted as model weights (globs; the RNG states are
# rng_state.pth or rng_state_<rank>.pth, for which transformers has no constant).
TRAINER_STATE_FILES = (TRAINING_ARGS_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE, "rng_state*.pth")

# ------------------------------------------------------------------------------------------- checkpoints only
LOCK_STATE_FILE = "encoderlock_state.json"  # what an exact resume needs beyond weights and mask
LOCK_TENSORS_FILE = "encoderlock_state.safetensors"  # heads and the best encoder's weights
LOCK_STATE_FORMAT = "encoderlock-state/v1"
# What stays on the owner's machine unless a push explicitly asks for the mask (globs): the mask says which weights
# the lock changed, the lock state and Trainer state are how to resume or undo it.
PRIVATE_FILES = (MASK_FILE, LOCK_STATE_FILE, LOCK_TENSORS_FILE, TRAINER_STATE_FILE, *TRAINER_STATE_FILES)

# ------------------------------------------------------------------------------------------------------ reports
REPORT_FORMAT_VERSION = 1  # probe and attack reports (``format_version`` in their JSON)
PROBE_REPORT_STEM = "probe_report"  # probe_report.json / .md / .png
ATTACK_REPORT_STEM = "attack_report"
ADAPTIVE_REPORT_STEM = "adaptive_report"  # the adaptive attacker (knows the method): adaptive_report.json / .md
AUDIT_JSON, AUDIT_MD = "audit.json", "audit.md"
# The main job's output folder
REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "probe.png"
VICTIM_SUBDIR, LOCKED_SUBDIR = "victim", "locked"
CHECKPOINTS_SUBDIR = "checkpoints"  # the main job's lock checkpoints, kept until the run has finished

# ------------------------------------------------------------------------------------------------ victim asset
VICTIM_RECIPE_FILE = "victim_recipe.json"
VICTIM_CACHE_NAME = "victim-v1"

# --------------------------------------------------------------------------------------------- atomic folders
STAGING_INFIX = ".partial-"  # a save is written into the hidden sibling ``.{name}.partial-XXXX`` first
LOCK_SUFFIX = ".lock"  # a run holds its output folder through the hidden sibling ``.{name}.lock``
RETIRED_INFIX = ".old-"  # a replaced folder briefly lives at ``.{name}.old-XXXX`` before it is deleted
PRIVATE_FOLDER_MODE = 0o700  # a checkpoint: mask, lock state and optimizer state are the owner's alone
SAVED_FOLDER_MODE = 0o755  # mkdtemp makes staging folders private; a published folder is readable like any other

# ------------------------------------------------------------------------------------------------------ signing
# An OpenSSF model-signing bundle over every file a push publishes (the card included); pushed with the lock.
SIGNATURE_FILE = "model.sig"
# The card format whose ``encoderlock:`` block hashes every published file, not only the weights (v1 did).
CARD_FORMAT_V2 = "encoderlock-card/v2"

# ------------------------------------------------------------------------------------------------ what we publish
# The only names (globs, top-level files) a push uploads and a card hashes: what transformers writes for an encoder
# and its image processor, and this package's own files. Anything else in a locked folder (a user's notes, keys,
# other weights) never leaves the machine. The mask is added only when a push asks for it.
PUBLISHED_FILES = (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    MODEL_WEIGHTS_INDEX_FILE,
    MODEL_WEIGHTS_SHARDS,
    PROCESSOR_CONFIG_FILE,
    PLAIN_MODULE_CONFIG_FILE,
    LOCK_CONFIG_FILE,
    CARD_FILE,
    SIGNATURE_FILE,
)

# ------------------------------------------------------------------------------------------- what we may replace
# Names (globs) of everything this package writes into an output folder. Anything else there is the user's: a save
# or a main job refuses such a folder unless overwrite_output_dir, and never deletes it either way.
PACKAGE_OUTPUTS = (
    *PUBLISHED_FILES,
    *PRIVATE_FILES,
    f"{CHECKPOINT_PREFIX}*",
    "runs",
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    VICTIM_SUBDIR,
    LOCKED_SUBDIR,
    CHECKPOINTS_SUBDIR,
)
