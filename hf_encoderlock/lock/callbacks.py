"""The Trainer callback of a lock run: thin hooks from ``transformers.Trainer`` events to the trainer's lock driver.

Global step ``r * update_steps_per_round`` starts round ``r``; what a round start does (self-challenge when due,
then weight selection), and in which order, is written in :meth:`EncoderLockTrainer.start_round
<hf_encoderlock.lock.trainer.EncoderLockTrainer.start_round>`, not in the order callbacks are registered. Around
each optimiser step the callback applies the trainer's :class:`~hf_encoderlock.lock.masking.MaskedParameterGuard`,
which keeps every unselected weight entry bit-identical.
"""

from __future__ import annotations

from typing import Protocol

from transformers import TrainerCallback


class LockRunner(Protocol):
    """What the callback needs of the trainer (typed structurally: callbacks do not import the trainer module)."""

    def begin_lock(self, global_step: int) -> None: ...

    def start_round(self, round_index: int) -> None: ...

    def end_lock(self) -> None: ...

    def before_optimizer_step(self) -> None: ...

    def after_optimizer_step(self) -> None: ...


def _round_starting_at(step: int, steps_per_round: int) -> int | None:
    return step // steps_per_round if step % steps_per_round == 0 else None


class LockRoundCallback(TrainerCallback):
    """Drives a lock run from the Trainer's events: begin and end of training, round starts, optimiser steps.

    Takes the trainer in its constructor (``transformers`` does not hand callbacks the trainer).
    """

    def __init__(self, trainer: LockRunner) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.begin_lock(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        round_index = _round_starting_at(state.global_step, args.update_steps_per_round)
        if round_index is not None:
            self.trainer.start_round(round_index)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.before_optimizer_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.after_optimizer_step()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.end_lock()
