"""The challenger: the adversaries a lock trains against.

A self-challenge (:meth:`Challenger.challenge`) fits fresh heads from scratch on the current encoder's features of
the lock data, as a probing attacker would, installs the strongest prohibited head as the adversary the next updates
train against, and keeps the encoder with the best validation gap. :func:`simulated_attacker_weights` is the other
adversary: an attacker fine-tuning the encoder itself for a few steps, simulated inside the loss
(``finetune_aware_steps``). A new adversary (an adaptive attacker that knows the method) goes here: fitted in
:meth:`Challenger.challenge` against the same challenge sets, or simulated beside :func:`simulated_attacker_weights`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ..data.lock_tensors import LockRows
from ..encoders import EncoderAdapter
from ..probing.heads import HeadTrainingConfig, best_head, head_accuracy, train_heads
from .config import EncoderLockConfig
from .lock_data import LockData
from .objectives import LockHeads
from .state import LockState

#: Fresh heads of round r draw seeds from args.seed + this * (r + 1) (the authorized ones; the prohibited ones add
#: PROHIBITED_SEED_OFFSET), so that no two challenges share a head's initialisation.
CHALLENGE_SEED_STRIDE = 1000
PROHIBITED_SEED_OFFSET = 500


class Challenger:
    """Fresh probing adversaries on ``encoder``'s features of ``data.challenge_sets``, sized by ``args``
    (``adversary_kinds`` x ``adversary_seeds`` x ``adversary_learning_rates``, ``adversary_epochs``,
    ``adversary_hidden_size``)."""

    def __init__(self, args: EncoderLockConfig, encoder: EncoderAdapter, data: LockData) -> None:
        self.args, self.encoder, self.data = args, encoder, data

    @torch.no_grad()
    def encode(self, rows: LockRows, batch_size: int | None = None) -> torch.Tensor:
        """Features of the current encoder for lock rows (eval mode, no gradient, on the CPU), ``batch_size``
        images at a time (default: ``per_device_eval_batch_size``)."""
        was_training = self.encoder.training
        self.encoder.eval()
        device = self.args.device
        batch_size = batch_size or self.args.per_device_eval_batch_size
        parts = [self.encoder(chunk.to(device)).float().cpu() for chunk in rows.pixel_chunks(batch_size)]
        self.encoder.train(was_training)
        return torch.cat(parts)

    def fit_best_head(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        val_x: torch.Tensor,
        val_y: torch.Tensor,
        num_classes: int,
        seed_offset: int,
    ):
        """The ensemble of fresh heads fitted on ``train_x``; the best by validation accuracy (a ``FittedHead``)."""
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

    def challenge(self, state: LockState, round_index: int, candidates: Mapping[str, nn.Parameter]) -> dict[str, float]:
        """Fit fresh heads on the current encoder; install the strongest adversary in ``state``; keep the best encoder.

        Features of the challenge sets are extracted once; the strongest fresh prohibited head by validation accuracy
        becomes the adversary if it beats the installed one there; a fresh authorized head is fitted the same way.
        A locked encoder (``round_index > 0``) whose validation gap is at least the best so far becomes the kept
        encoder (``candidates``' values, with its heads). Returns the round's figures.
        """
        sets = self.data.challenge_sets
        started = time.perf_counter()
        a_train, a_val = self.encode(sets["lock_authorized"]), self.encode(sets["val_authorized"])
        p_train, p_val = self.encode(sets["lock_prohibited"]), self.encode(sets["val_prohibited"])
        offset = CHALLENGE_SEED_STRIDE * (round_index + 1)
        auth = self.fit_best_head(
            a_train,
            sets["lock_authorized"].labels,
            a_val,
            sets["val_authorized"].labels,
            self.data.lock_authorized.num_classes,
            offset,
        )
        adv = self.fit_best_head(
            p_train,
            sets["lock_prohibited"].labels,
            p_val,
            sets["val_prohibited"].labels,
            self.data.lock_prohibited.num_classes,
            offset + PROHIBITED_SEED_OFFSET,
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
            state.best_state = {n: p.detach().clone() for n, p in candidates.items()}
            state.best_heads = state.heads
            state.best_stale_heads = in_use
            state.best_round = round_index
        state.last_challenge_round = round_index
        elapsed = time.perf_counter() - started
        state.phase_time["challenge"] += elapsed
        return {
            "round": round_index,
            "challenge_authorized_val_accuracy": auth.val_accuracy,
            "challenge_prohibited_val_accuracy": adv.val_accuracy,
            "challenge_gap": gap,
            "adversary_val_accuracy": state.adversary_val_accuracy,
            "time_challenge_s": elapsed,
        }


def simulated_attacker_weights(
    encoder: nn.Module,
    adversary: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    learning_rate: float,
) -> dict[str, torch.Tensor]:
    """``encoder``'s weights after ``steps`` simulated steps of an attacker fine-tuning every weight with the
    ``adversary`` head on a prohibited batch.

    Each step is what Adam's first step would be, ``-learning_rate * sign(gradient)`` (an attacker's Adam moves every
    weight by about its learning rate). Weights that require grad (the lock's candidates) stay differentiable (the
    steps are constants added to them: first-order, as SOPHON); the others are detached.
    """
    weights = {
        name: param if param.requires_grad else param.detach().requires_grad_(True)
        for name, param in encoder.named_parameters()
    }
    for _ in range(steps):
        with torch.enable_grad():
            features = functional_call(encoder, weights, (pixels,))
            attack_loss = F.cross_entropy(adversary(features), labels)
            grads = torch.autograd.grad(attack_loss, list(weights.values()), allow_unused=True)
        weights = {
            name: value if grad is None else value - learning_rate * grad.detach().sign()
            for (name, value), grad in zip(weights.items(), grads)
        }
    return weights
