"""The file names transformers' Trainer writes, spelled out in ``_files`` (importing the Trainer there would load it
into every command), are still the ones transformers uses."""

import transformers.trainer as hf_trainer
import transformers.trainer_utils as hf_trainer_utils

from hf_encoderlock import _files


def test_trainer_file_names_are_transformers_own():
    assert _files.PREFIX_CHECKPOINT_DIR == hf_trainer_utils.PREFIX_CHECKPOINT_DIR
    assert _files.CHECKPOINT_PREFIX == f"{hf_trainer_utils.PREFIX_CHECKPOINT_DIR}-"
    assert _files.TRAINER_STATE_FILE == hf_trainer.TRAINER_STATE_NAME
    assert _files.TRAINING_ARGS_FILE == hf_trainer.TRAINING_ARGS_NAME
    assert (_files.OPTIMIZER_FILE, _files.SCHEDULER_FILE, _files.SCALER_FILE) == (
        hf_trainer.OPTIMIZER_NAME,
        hf_trainer.SCHEDULER_NAME,
        hf_trainer.SCALER_NAME,
    )
