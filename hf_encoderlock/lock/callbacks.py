"""Trainer callbacks of a lock run: weight selection per round, and the self-challenge.

Both take the :class:`~hf_encoderlock.trainer.EncoderLockTrainer` in their constructor (callbacks are not given the
trainer by ``transformers``) and act at round boundaries: global step ``r * update_steps_per_round`` starts round
``r``. The self-challenge runs first in a round, so selection scores the weights against the freshest adversary.
"""

from __future__ import annotations

import time
import torch
from transformers import Trainer, TrainerCallback

from .masking import MaskedParameterGuard
from .selection import (
    accumulate_gradient_stats,
    compute_scores,
    mask_stats,
    merge_masks,
    select_top_weights,
    sync_gradient_stats,
    sync_mask_across_processes,
)


def _round_starting_at(step: int, steps_per_round: int) -> int | None:
    return step // steps_per_round if step % steps_per_round == 0 else None


class WeightSelectionCallback(TrainerCallback):
    """Scores candidate weights each round, grows the OR-accumulated mask and keeps updates exact.

    Each round: gradient statistics of the objective's prohibited and authorized terms over ``score_batches``
    batches of each domain (reduced across processes), scores by ``score_function``, top-M layers and top-N new
    weights (exact index mapping, see :func:`~hf_encoderlock.selection.select_top_weights`), then the mask is
    broadcast from rank 0 and installed in a :class:`~hf_encoderlock.masking.MaskedParameterGuard`, which masks
    gradients and restores every unselected entry after each optimiser step.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.guard: MaskedParameterGuard | None = None
        self.rounds_done = 0

    # ------------------------------------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, **kwargs):
        encoder = self.trainer.encoder
        distributed = args.parallel_mode.value == "distributed" if hasattr(args, "parallel_mode") else False
        self.guard = MaskedParameterGuard(encoder, freeze_unselected=not distributed)
        self.guard.install(self.trainer.mask)
        missing = [n for n in self.trainer.candidates if n in self.guard.missing_from(self.trainer.optimizer)]
        if missing:
            raise RuntimeError(f"candidate weights missing from the optimizer: {missing[:5]}")
        self.rounds_done = self.trainer.rounds_completed_in_mask

    def on_step_begin(self, args, state, control, **kwargs):
        round_index = _round_starting_at(state.global_step, args.update_steps_per_round)
        if round_index is None or round_index < self.rounds_done:
            return
        started = time.perf_counter()
        new = self.select(round_index)
        self.trainer.mask = merge_masks(self.trainer.mask, new)
        self.guard.install(self.trainer.mask)
        self.rounds_done = round_index + 1
        self.trainer.rounds_completed_in_mask = self.rounds_done
        stats = mask_stats(self.trainer.mask, self.trainer.encoder)
        self.trainer.record_round(
            {
                "round": round_index,
                "mask_size": stats["count"],
                "mask_fraction": stats["fraction_of_parameters"],
                "time_selection_s": time.perf_counter() - started,
            }
        )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.guard.mask_gradients()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.guard.restore_unselected()

    def on_train_end(self, args, state, control, **kwargs):
        if self.guard is not None:
            self.guard.remove()

    # ------------------------------------------------------------------------------------------------ scoring
    def select(self, round_index: int) -> dict[str, torch.Tensor]:
        """One round's newly selected entries (identical on every rank)."""
        trainer, args = self.trainer, self.trainer.args
        candidates = trainer.candidates
        generator = torch.Generator().manual_seed(args.seed + 7919 * (round_index + 1))
        # A score batch is one global optimiser batch (all ranks x accumulation steps), drawn identically on every
        # rank; each rank scores its own micro-batch shards, and sync_gradient_stats averages over all of them.
        accumulation = args.gradient_accumulation_steps
        parts, first = args.world_size * accumulation, args.process_index * accumulation
        size = args.per_device_train_batch_size * parts
        a_batches = [b.shard(first + j, parts) for b in trainer.lock_authorized.batches(size, args.score_batches, generator) for j in range(accumulation)]
        p_batches = [b.shard(first + j, parts) for b in trainer.lock_prohibited.batches(size, args.score_batches, generator) for j in range(accumulation)]
        encoder = trainer.encoder
        was_training = encoder.training
        encoder.eval()
        with self.guard.suspended():
            prohibited = accumulate_gradient_stats(
                candidates, [trainer.term_closure(a, p, "prohibited") for a, p in zip(a_batches, p_batches)]
            )
            authorized = accumulate_gradient_stats(
                candidates, [trainer.term_closure(a, p, "authorized") for a, p in zip(a_batches, p_batches)]
            )
        encoder.train(was_training)
        prohibited, authorized = sync_gradient_stats(prohibited), sync_gradient_stats(authorized)
        scores = compute_scores(candidates, prohibited, authorized, args.score_function, args.score_eps)
        gate = None
        if args.magnitude_gate is not None:
            gate = {
                name: weight.detach().abs() >= torch.quantile(weight.detach().abs().float().flatten(), args.magnitude_gate)
                for name, weight in candidates.items()
            }
        new = select_top_weights(
            scores, args.layers_per_round, args.weights_per_round, existing_mask=trainer.mask, magnitude_gate=gate
        )
        return sync_mask_across_processes(new)


class SelfChallengeCallback(TrainerCallback):
    """Trains fresh heads on the current encoder at a set cadence and keeps the best encoder.

    Every ``challenge_every`` rounds (and before the first round, and after the last step) the trainer
    extracts features of the lock data once, fits an ensemble of fresh heads (``adversary_kinds`` x seeds x
    learning rates) on them, picks the strongest by accuracy on the validation split of the prohibited lock data
    and installs it as the adversary if it beats the current one there. A fresh authorized head is fitted the
    same way. With ``best_model_criterion="gap"``, the encoder with the largest validation gap (authorized minus
    prohibited fresh-head accuracy) is restored at the end of training.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def _due(self, args, step: int) -> int | None:
        round_index = _round_starting_at(step, args.update_steps_per_round)
        if round_index is None:
            return None
        if round_index == 0 or (args.challenge_every and round_index % args.challenge_every == 0):
            return round_index
        return None

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run gets its heads from the checkpoint; one without them refits in the round it resumes in.
        if self.trainer.heads is None:
            self.trainer.challenge(round_index=state.global_step // args.update_steps_per_round)

    def on_step_begin(self, args, state, control, **kwargs):
        round_index = self._due(args, state.global_step)
        if round_index and round_index != self.trainer.last_challenge_round:
            self.trainer.challenge(round_index=round_index)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.challenge(round_index=args.num_rounds)
        self.trainer.restore_best_encoder()
