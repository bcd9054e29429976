"""The round driver: which weights a round may change (selection), and how each update changes them (masked,
projected, bounded updates).

:func:`candidate_weights` and :func:`check_budget` fix what selection may choose from. A :class:`RoundDriver`
then, at each round start, scores the candidates by the gradients of the objective's two terms and ORs the round's
top weights into the mask (:meth:`RoundDriver.select_round`); around each optimiser step it masks the gradients,
sets the step's learning rate (repair, unprojected, drift guard), and afterwards puts every unselected entry back,
projects the update off the authorized inputs' directions and keeps changed weights in their tensor's natural range
(:meth:`RoundDriver.before_optimizer_step`, :meth:`RoundDriver.after_optimizer_step`). Everything it changes from
step to step lives in the :class:`~hf_encoderlock.lock.state.LockState` handed to each call.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..data.lock_tensors import DomainTensors, LockRows, one_view_rows
from ..encoders import EncoderAdapter
from .config import AUTO_PROJECTION, EncoderLockConfig
from .lock_data import LockData
from .masking import MaskedParameterGuard, natural_range
from .objectives import ObjectiveTerms
from .projection import AuthorizedProjection, layer_input_moments, supports_projection
from .selection import (
    accumulate_gradient_stats,
    block_index,
    compute_scores,
    mask_stats,
    merge_masks,
    reachable_scores,
    row_scores,
    select_candidate_parameters,
    select_top_weights,
    sum_across_processes,
    sync_gradient_stats,
    sync_mask_across_processes,
)
from .state import LockState

logger = logging.getLogger(__name__)
# Warn when the budget (num_rounds x weights_per_round) exceeds this share of the candidate weights: the lock is
# meant to change a sparse set of weights, and the default budget is below it on the default victim.
BUDGET_WARNING_SHARE = 0.05
# Below this share of the prohibited gradient's energy in the directions the projection leaves free, a projected lock
# barely moves (docs/RESULTS.md, "Every domain pair", has the shares measured at round 0 on the built-in pairs and
# what the projected locks removed). authorized_projection='auto' drops the projection below it.
LOW_FREE_SHARE = 0.01
SCORE_SEED_STRIDE = 7919  # round r draws its score batches from a generator seeded args.seed + this * (r + 1)

#: ``terms(a_pixels, a_labels, p_pixels, p_labels)``: the objective's terms on one pair of batches, through the
#: current heads (the trainer's loss path); selection differentiates its ``prohibited`` and ``authorized`` parts.
TermsFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], ObjectiveTerms]


def candidate_weights(encoder: EncoderAdapter, args: EncoderLockConfig) -> dict[str, nn.Parameter]:
    """The weights selection may choose from, named as ``encoder``'s parameters (``backbone.`` prefix).

    ``candidate_blocks`` names transformer blocks / stages; a model without any (a plain module's layers have no
    block numbers) takes every candidate weight instead, with a warning, so the default config works for it too.
    """
    backbone = encoder.backbone
    choose = dict(module_types=tuple(args.candidate_module_types), name_patterns=args.candidate_name_patterns)
    try:
        chosen = select_candidate_parameters(backbone, block_indices=args.candidate_blocks, **choose)
    except ValueError:
        has_blocks = any(block_index(name) is not None for name, _ in backbone.named_parameters())
        if args.candidate_blocks is None or has_blocks:
            raise
        logger.warning(
            "%s has no numbered blocks or stages: candidate_blocks=%s is ignored and every %s weight is a candidate",
            encoder.name,
            args.candidate_blocks,
            "/".join(args.candidate_module_types),
        )
        chosen = select_candidate_parameters(backbone, block_indices=None, **choose)
    return {f"backbone.{name}": param for name, param in chosen.items()}


def weights_per_round_for(candidates: Mapping[str, nn.Parameter], args: EncoderLockConfig) -> int:
    """Weights selected per round: ``args.weights_per_round``, or with ``weight_budget_share`` that share of the
    candidate weights spread over ``num_rounds`` rounds (rounded down, at least 1)."""
    if args.weight_budget_share is None:
        return args.weights_per_round
    total = sum(param.numel() for param in candidates.values())
    return max(1, math.floor(args.weight_budget_share * total / args.num_rounds))


def check_budget(candidates: Mapping[str, nn.Parameter], args: EncoderLockConfig) -> None:
    """``weights_per_round`` must fit in the ``layers_per_round`` largest candidate tensors, and the whole budget in
    the candidates: otherwise selection would silently take whole layers or run out of weights."""
    sizes = sorted((param.numel() for param in candidates.values()), reverse=True)
    per_round = sum(sizes[: args.layers_per_round])
    # the messages name the setting the user gave: a share is resolved into weights_per_round before this check
    share = args.weight_budget_share
    asked = (
        f"weights_per_round={args.weights_per_round}"
        if share is None
        else f"weight_budget_share={share} ({args.weights_per_round} weights a round over num_rounds={args.num_rounds})"
    )
    if args.weights_per_round > per_round:
        raise ValueError(
            f"{asked} exceeds the {per_round} entries of the {args.layers_per_round} largest candidate layer(s) "
            f"(layers_per_round): lower {'it' if share is None else 'the share'}, raise layers_per_round"
            + ("" if share is None else " or num_rounds")
        )
    budget = args.weights_per_round * args.num_rounds
    if budget > sum(sizes):
        raise ValueError(
            f"num_rounds x weights_per_round = {budget} exceeds the "
            f"{sum(sizes)} candidate weights (candidate_blocks={args.candidate_blocks}); lower the budget"
        )
    if budget > BUDGET_WARNING_SHARE * sum(sizes):
        # the budget is absolute: sized for the default victim, it rewrites much of a small encoder's layers
        sparse = BUDGET_WARNING_SHARE / 2
        advice = (
            f"for this encoder consider weights_per_round={max(1, int(sparse * sum(sizes) / args.num_rounds))} "
            f"({100 * sparse:.0f}% of them), or state the budget as a share of the candidates with "
            "weight_budget_share"
            if share is None
            else f"a smaller weight_budget_share (e.g. {sparse:g}) keeps it sparse"
        )
        logger.warning(
            "%s makes a budget of %d weights, %.0f%% of the %d candidate weights (candidate_blocks=%s): the lock will "
            "change a large share of those layers, not a sparse set of weights; %s.",
            asked
            if share is not None
            else f"num_rounds x weights_per_round = {args.num_rounds} x {args.weights_per_round}",
            budget,
            100 * budget / sum(sizes),
            sum(sizes),
            args.candidate_blocks,
            advice,
        )


class RoundDriver:
    """Selection and masked updates of ``candidates`` (weights of ``encoder``), as ``args`` configures them.

    ``terms`` is the objective on a pair of batches (see :data:`TermsFunction`); ``reference_encoder`` the frozen
    unlocked copy whose authorized input moments the projection is built from (``None``: no projection);
    ``lowers_prohibited`` the objective's :attr:`~hf_encoderlock.lock.objectives.LockObjective.lowers_prohibited`
    (which way ``bound_aware_scores`` measures a weight's room). The :class:`MaskedParameterGuard` is installed by
    :meth:`attach` for the length of a training run.
    """

    def __init__(
        self,
        args: EncoderLockConfig,
        encoder: EncoderAdapter,
        candidates: Mapping[str, nn.Parameter],
        data: LockData,
        terms: TermsFunction,
        reference_encoder: nn.Module | None = None,
        lowers_prohibited: bool = True,
    ) -> None:
        self.args, self.encoder, self.candidates, self.data = args, encoder, candidates, data
        self.terms, self.reference_encoder = terms, reference_encoder
        self.lowers_prohibited = lowers_prohibited  # the objective's: which way the update moves its prohibited term
        self.guard: MaskedParameterGuard | None = None
        # Per entry, the range a bounded update keeps it in: its tensor's natural range, each edge drawn a little
        # inside (bound_jitter), widened to the entry's own unlocked value, so a natural outlier that gets selected is
        # not pulled in (a lock that erased the tensor's outliers would be a tell too). From the unlocked weights and
        # the seed at construction: a resumed run, built from the unlocked encoder again, recomputes the same ranges
        # (on every rank), so they are not saved.
        self.weight_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if args.weight_bound is not None:
            for name, param in candidates.items():
                original = param.detach()
                low, high = natural_range(original, args.weight_bound)
                edges = (low, high)
                if args.bound_jitter:
                    centre, half = (low + high) / 2, (high - low) / 2
                    generator = torch.Generator().manual_seed(args.seed + zlib.crc32(name.encode()))
                    inward = args.bound_jitter * half * torch.rand((2, *original.shape), generator=generator)
                    inward = inward.to(device=original.device, dtype=original.dtype)
                    edges = (centre - half + inward[0], centre + half - inward[1])
                self.weight_ranges[name] = (original.clamp(max=edges[0]), original.clamp(min=edges[1]))

    # ----------------------------------------------------------------------------------------------- guard
    def attach(self, state: LockState, optimizer: torch.optim.Optimizer) -> None:
        """Install the guard of ``state.mask`` over the encoder (and the projection of its rows)."""
        # DDP's reducer waits for every parameter it was built with: nothing may be frozen under it.
        self.guard = MaskedParameterGuard(
            self.encoder, freeze_unselected=self.args.parallel_mode.value != "distributed"
        )
        self.install_mask(state)
        missing = [n for n in self.candidates if n in self.guard.missing_from(optimizer)]
        if missing:
            raise RuntimeError(f"candidate weights missing from the optimizer: {missing[:5]}")

    def detach(self) -> None:
        """Remove the guard (end of training)."""
        if self.guard is not None:
            self.guard.remove()
            self.guard = None

    def install_mask(self, state: LockState) -> None:
        """Install ``state.mask`` in the guard and, with ``authorized_projection``, build its rows' projectors (the
        unlocked encoder's authorized input moments are computed at the first call, booked as ``reference``)."""
        self.guard.install(state.mask)
        if self.args.projection_threshold() is None or state.projection_dropped:
            return
        if state.projection is None:
            started, device = time.perf_counter(), self.args.device
            self.reference_encoder.to(device)
            chunks = self.data.challenge_sets["lock_authorized"].pixel_chunks(self.args.per_device_eval_batch_size)
            projected = [name for name in self.candidates if supports_projection(self.reference_encoder, name)]
            if len(projected) < len(self.candidates):
                logger.warning(
                    "authorized_projection: %d candidate weight(s) are not Linear or ungrouped, zero-padded Conv2d "
                    "weights; their updates are not projected (e.g. %s)",
                    len(self.candidates) - len(projected),
                    next(name for name in self.candidates if name not in projected),
                )
            moments = layer_input_moments(self.reference_encoder, projected, (chunk.to(device) for chunk in chunks))
            state.projection = AuthorizedProjection(moments, self.args.projection_threshold())
            state.phase_time["reference"] += time.perf_counter() - started
        state.projection.prepare(state.mask)

    # ------------------------------------------------------------------------------------------- selection
    def select_round(self, state: LockState, round_index: int) -> dict[str, Any]:
        """Select round ``round_index``'s weights, OR them into ``state.mask`` and install it; the round's figures.

        At round 0, when the projection leaves the prohibited gradient next to no room (:data:`LOW_FREE_SHARE`),
        ``authorized_projection='auto'`` drops it for the rest of the run and the round is scored again unprojected.
        """
        started = time.perf_counter()
        new, free_share = self.select_weights(state, round_index)
        if free_share is not None and round_index == 0 and free_share < LOW_FREE_SHARE:
            self._on_low_free_share(state, free_share)
            if state.projection_dropped:
                new, _ = self.select_weights(state, round_index)  # scored by the whole gradient, as updates now move
        state.mask = merge_masks(state.mask, new)
        self.install_mask(state)
        state.rounds_completed = round_index + 1
        stats = mask_stats(state.mask, self.encoder)
        return {
            "round": round_index,
            "mask_size": stats["count"],
            "mask_fraction": stats["fraction_of_parameters"],
            "time_selection_s": time.perf_counter() - started,
            **({} if free_share is None else {"projection_free_share": free_share}),
            **({"projection_dropped": True} if round_index == 0 and state.projection_dropped else {}),
        }

    def _on_low_free_share(self, state: LockState, free_share: float) -> None:
        """At the first round, when the projection leaves the prohibited gradient next to no room: with
        ``authorized_projection='auto'``, drop it for the rest of the run (recorded in the lock state, so a resumed
        run keeps the decision); with a threshold the user chose, warn."""
        why = (
            f"only {100 * free_share:.2g}% of the prohibited objective's gradient lies in directions the authorized "
            "inputs leave free: the two domains use the same input directions of the candidate layers, and a "
            "projected lock would remove next to nothing (measured in docs/DEFAULT_LOCK.md on the built-in colour "
            "authorized domains)"
        )
        if self.args.authorized_projection != AUTO_PROJECTION:
            logger.warning(
                "authorized_projection: %s. Consider authorized_projection='auto', which then runs unprojected "
                "(docs/RESULTS.md, 'Every domain pair').",
                why,
            )
            return
        logger.warning(
            "authorized_projection='auto': %s. The lock runs unprojected at unprojected_learning_rate=%g instead "
            "(any repair steps continue it); expect it to cost the authorized domain more (docs/RESULTS.md, 'Every "
            "domain pair').",
            why,
            self.args.unprojected_learning_rate,
        )
        state.projection = None
        state.projection_dropped = True

    def select_weights(self, state: LockState, round_index: int) -> tuple[dict[str, torch.Tensor], float | None]:
        """One round's newly selected entries (identical on every rank), and with a projection the share of the
        prohibited gradient's energy it lets through (``None`` without one).

        Gradient statistics of the objective's prohibited and authorized terms over ``score_batches`` batches of
        each domain (reduced across processes), scores by ``score_function``, then the top ``layers_per_round``
        layers and top ``weights_per_round`` new weights (exact index mapping, see
        :func:`~hf_encoderlock.lock.selection.select_top_weights`), broadcast from rank 0.
        """
        args, candidates, device, projection = self.args, self.candidates, self.args.device, state.projection
        generator = torch.Generator().manual_seed(args.seed + SCORE_SEED_STRIDE * (round_index + 1))
        # A score batch is one global optimiser batch (all ranks x accumulation steps), drawn identically on every
        # rank; each rank scores its own micro-batch shards, and sync_gradient_stats averages over all of them.
        accumulation = args.gradient_accumulation_steps
        parts, first = args.world_size * accumulation, args.process_index * accumulation
        size = args.per_device_train_batch_size * parts

        def shards(data: LockRows, views: int = 1) -> list[DomainTensors]:
            # Draw each global batch's rows, then decode only this rank's micro-batch shares of them
            out = []
            for _ in range(args.score_batches):
                index = torch.randperm(len(data), generator=generator)[:size]
                if views > 1:  # one view per score batch, as in the update batches
                    view = int(torch.randint(views, (1,), generator=generator))
                    index = one_view_rows(index, views, len(data), view)
                for part in range(first, first + accumulation):
                    share = index[part::parts]
                    out.append(data.take(share if len(share) else index[part % len(index)].view(1)))
            return out

        def term(a: DomainTensors, p: DomainTensors, which: str):
            def closure() -> torch.Tensor:
                p_labels = None if p.labels is None else p.labels.to(device)
                terms = self.terms(a.pixel_values.to(device), a.labels.to(device), p.pixel_values.to(device), p_labels)
                return getattr(terms, which)

            return closure

        a_batches = shards(self.data.lock_authorized)
        p_batches = shards(self.data.lock_prohibited, self.data.batch_views)
        whole: dict[str, torch.Tensor] = {}  # the prohibited gradient summed over score batches, before projection

        def free_part(name: str, gradient: torch.Tensor) -> torch.Tensor:
            whole[name] = gradient.clone() if name not in whole else whole[name].add_(gradient)
            return projection.free_gradient(name, gradient)

        was_training = self.encoder.training
        self.encoder.eval()
        with self.guard.suspended():  # the guard's hooks would mask the very gradients that score weights
            # with a projection, weights are scored by the part of their gradient that the projection lets through
            prohibited = accumulate_gradient_stats(
                candidates,
                [term(a, p, "prohibited") for a, p in zip(a_batches, p_batches)],
                transform=None if projection is None else free_part,
            )
            authorized = accumulate_gradient_stats(
                candidates, [term(a, p, "authorized") for a, p in zip(a_batches, p_batches)]
            )
        self.encoder.train(was_training)
        prohibited, authorized = sync_gradient_stats(prohibited), sync_gradient_stats(authorized)
        scores = compute_scores(candidates, prohibited, authorized, args.score_function, args.score_eps)
        if args.bound_aware_scores:
            scores = reachable_scores(scores, candidates, prohibited, self.weight_ranges, self.lowers_prohibited)
        if args.selection_unit == "row":
            scores = row_scores(scores)
        gate = None
        if args.magnitude_gate is not None:
            magnitudes = {name: weight.detach().abs() for name, weight in candidates.items()}
            gate = {
                name: value >= torch.quantile(value.float().flatten(), args.magnitude_gate)
                for name, value in magnitudes.items()
            }
        new = select_top_weights(
            scores, args.layers_per_round, args.weights_per_round, existing_mask=state.mask, magnitude_gate=gate
        )
        free_share = None
        if projection is not None:
            # The share of the summed gradient's energy, from sums over every rank: ranks (and one process holding
            # their batches) must agree on what the share decides. The projection is linear, so the free part of the
            # sum is the sum of the free parts that the prohibited statistics hold.
            whole = sum_across_processes(whole)
            free = sum(prohibited.grad_sum[name].double().pow(2).sum() for name in whole)
            total = sum(gradient.double().pow(2).sum() for gradient in whole.values())
            free_share = float(free) / max(float(total), 1e-30)
        return sync_mask_across_processes(new), free_share

    # ---------------------------------------------------------------------------------------------- updates
    @staticmethod
    def projects(state: LockState, repairing: bool) -> bool:
        """Whether this update is projected. Repair steps are not: an authorized loss's gradient lies in the span of
        the authorized inputs, which is exactly what the projection removes."""
        return state.projection is not None and not repairing

    def before_optimizer_step(self, state: LockState, optimizer: torch.optim.Optimizer, repairing: bool) -> None:
        """Before each optimiser step: mask the gradients; with a projection, keep the masked weights' values; in a
        repair step, the optimiser at ``repair_learning_rate``; past ``max_authorized_drift``, at a scaled-down
        rate (the drift guard)."""
        self.guard.mask_gradients()
        if self.projects(state, repairing):
            state.weights_before_step = {
                name: self.candidates[name].detach().clone() for name in state.projection.names
            }
        state.scheduled_lrs = None
        if repairing:
            self._set_step_learning_rates(state, optimizer, lambda _: self.args.repair_learning_rate)
            return
        scale = 1.0
        if state.projection_dropped:  # as a factor, so that a user's scheduler still shapes the rate
            scale = self.args.unprojected_learning_rate / self.args.learning_rate
        drift = state.last_logs.get("authorized_drift")  # None: the objective measures no drift
        if self.args.max_authorized_drift > 0 and drift is not None and self.projects(state, repairing):
            # The drift is this step's, measured before its update. A projected lock cannot pull the features back
            # (the preservation term's gradient is what the projection removes), so drift only grows, and at high
            # learning rates it compounds; smaller steps stop the growth.
            # Unprojected updates are left alone: the preservation term pulls their drift back.
            guard = min(1.0, self.args.max_authorized_drift / drift) if drift > 0 else 1.0
            state.last_logs["drift_guard_scale"] = guard
            scale *= guard
        if scale != 1.0:
            self._set_step_learning_rates(state, optimizer, lambda lr: lr * scale)

    @staticmethod
    def _set_step_learning_rates(
        state: LockState, optimizer: torch.optim.Optimizer, rate: Callable[[float], float]
    ) -> None:
        """Run this optimiser step at ``rate(scheduled_lr)`` in every group; :meth:`after_optimizer_step` puts the
        scheduler's rates back."""
        state.scheduled_lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = rate(group["lr"])

    def after_optimizer_step(self, state: LockState, optimizer: torch.optim.Optimizer, repairing: bool) -> None:
        """After each optimiser step: unselected entries back; with a projection, the update projected; changed
        weights back inside their range (``weight_bound``); the scheduler's learning rates back."""
        self.guard.restore_unselected()
        if self.projects(state, repairing):
            state.projection.project(self.candidates, state.weights_before_step)
        if self.weight_ranges:  # last: whatever moved a weight, it ends inside its tensor's natural range
            with torch.no_grad():
                for name, selected in state.mask.items():
                    if name in self.weight_ranges:
                        low, high = self.weight_ranges[name]
                        param = self.candidates[name]
                        bounded = torch.minimum(torch.maximum(param, low.to(param.device)), high.to(param.device))
                        param.copy_(torch.where(selected.to(param.device), bounded, param))
        if state.scheduled_lrs is not None:
            for group, lr in zip(optimizer.param_groups, state.scheduled_lrs):
                group["lr"] = lr
