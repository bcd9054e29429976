"""The private ``transformers.Trainer`` names EncoderLockTrainer relies on still exist with the parameters they were
checked against: a transformers release that renames or reshapes one fails here, not in the middle of a lock."""

import inspect

import pytest
from transformers import Trainer

from hf_encoderlock.lock.trainer import PRIVATE_TRAINER_HOOKS, EncoderLockTrainer


@pytest.mark.parametrize("name", sorted(name for name, params in PRIVATE_TRAINER_HOOKS.items() if params is not None))
def test_each_hooked_trainer_method_keeps_its_parameters(name):
    expected = PRIVATE_TRAINER_HOOKS[name]
    found = tuple(inspect.signature(getattr(Trainer, name)).parameters)[1:]  # without self
    assert found == expected, f"Trainer.{name} now takes {found}, was checked against {expected}"
    if name in vars(EncoderLockTrainer):  # an override takes what the Trainer passes
        override = tuple(inspect.signature(getattr(EncoderLockTrainer, name)).parameters)[1:]
        assert override == expected, f"EncoderLockTrainer.{name} takes {override}"


def test_the_trainer_still_sizes_its_training_batches_by_the_private_attribute():
    # EncoderLockTrainer sets _train_batch_size to fit k prohibited images per authorized one in a batch
    assert "self._train_batch_size" in inspect.getsource(Trainer.get_train_dataloader)
    assert "self._train_batch_size" in inspect.getsource(Trainer.get_total_train_batch_size)


def test_every_private_name_the_trainer_overrides_is_listed():
    overridden = {name for name in vars(EncoderLockTrainer) if name.startswith("_") and not name.startswith("__")}
    hooked = {name for name in overridden if name in vars(Trainer)}
    assert hooked <= set(PRIVATE_TRAINER_HOOKS), (
        f"unlisted private overrides: {sorted(hooked - set(PRIVATE_TRAINER_HOOKS))}"
    )
