"""The round driver without a trainer: a round's selection, masked updates that leave every unselected entry
bit-identical, bounded updates, repair steps at their own learning rate, and the budget checks."""

import pytest
import torch

from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.challenger import Challenger
from hf_encoderlock.lock.objectives import build_objective
from hf_encoderlock.lock.rounds import RoundDriver, candidate_weights, check_budget, weights_per_round_for
from hf_encoderlock.lock.state import LockState
from tests.helpers import tiny_lock_data


def _driver(args, toy_domains):
    """A driver over the tiny ViT with heads from one challenge, and the optimiser a trainer would build."""
    encoder, data = tiny_lock_data(args, toy_domains.authorized, toy_domains.prohibited)
    candidates = candidate_weights(encoder, args)
    for name, param in encoder.named_parameters():
        param.requires_grad_(name in candidates)
    state, objective = LockState(), build_objective(args)
    Challenger(args, encoder, data).challenge(state, 0, candidates)

    def terms(a_pixels, a_labels, p_pixels, p_labels):
        return objective.terms(encoder(a_pixels), a_labels, encoder(p_pixels), p_labels, state.heads)

    driver = RoundDriver(args, encoder, candidates, data, terms)
    optimizer = torch.optim.SGD(list(candidates.values()), lr=args.learning_rate)
    driver.attach(state, optimizer)
    return encoder, data, state, driver, optimizer, terms


def _update(driver, state, optimizer, terms, data, repairing=False):
    batch_a, batch_p = data.lock_authorized.take(torch.arange(12)), data.lock_prohibited.take(torch.arange(12))
    optimizer.zero_grad()
    terms(batch_a.pixel_values, batch_a.labels, batch_p.pixel_values, batch_p.labels).total.backward()
    driver.before_optimizer_step(state, optimizer, repairing)
    rates = [group["lr"] for group in optimizer.param_groups]
    optimizer.step()
    driver.after_optimizer_step(state, optimizer, repairing)
    return rates


def test_a_round_selects_its_budget_and_updates_move_only_the_selected_entries(tiny_lock_config, toy_domains):
    args = tiny_lock_config(weight_bound=1.0, learning_rate=0.5)
    encoder, data, state, driver, optimizer, terms = _driver(args, toy_domains)
    figures = driver.select_round(state, 0)
    assert figures["mask_size"] == args.weights_per_round and state.rounds_completed == 1
    assert sum(int(m.sum()) for m in state.mask.values()) == args.weights_per_round
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    _update(driver, state, optimizer, terms, data)
    changed = 0
    for name, param in encoder.named_parameters():
        moved = param.detach() != before[name]
        selected = state.mask.get(name, torch.zeros_like(moved))
        assert not moved[~selected].any(), f"unselected entries of {name} moved"
        changed += int(moved.sum())
        if name in driver.weight_ranges:  # bounded: inside the range, or no further out than the unlocked value
            low, high = driver.weight_ranges[name]
            assert bool(((param >= low) & (param <= high))[selected].all()), name
    assert changed > 0
    driver.select_round(state, 1)  # the next round ORs new entries into the mask
    assert sum(int(m.sum()) for m in state.mask.values()) == 2 * args.weights_per_round
    driver.detach()
    assert driver.guard is None


def test_row_selection_takes_whole_output_rows(tiny_lock_config, toy_domains):
    args = tiny_lock_config(selection_unit="row", weights_per_round=100)
    encoder, data, state, driver, optimizer, terms = _driver(args, toy_domains)
    driver.select_round(state, 0)
    assert sum(int(m.sum()) for m in state.mask.values()) == args.weights_per_round
    partial = 0
    for selected in state.mask.values():
        rows = selected.flatten(1)
        counts = rows.sum(1)
        width = rows.shape[1]
        # every row is taken whole or not at all, except at most one (where the round's budget ran out)
        partial += int(((counts > 0) & (counts < width)).sum())
    assert partial <= 1
    assert any(bool((m.flatten(1).sum(1) == m.flatten(1).shape[1]).any()) for m in state.mask.values())
    driver.detach()


def test_bound_aware_scores_change_which_weights_a_round_selects(tiny_lock_config, toy_domains):
    args = tiny_lock_config(weight_bound=0.5, bound_aware_scores=True, weights_per_round=100)
    encoder, data, state, driver, optimizer, terms = _driver(args, toy_domains)
    # the same round without bound-aware scores, to compare with
    plain_args = tiny_lock_config(weight_bound=0.5, weights_per_round=100)
    _, _, plain_state, plain_driver, _, _ = _driver(plain_args, toy_domains)
    plain_driver.select_round(plain_state, 0)
    driver.select_round(state, 0)
    assert sum(int(m.sum()) for m in state.mask.values()) == args.weights_per_round
    # a bound of 0.5 robust std leaves about 62% of a normal tensor's entries outside their range (widened to their
    # own value, they have room on one side only), so the two selections differ
    assert any(
        not torch.equal(state.mask[n], plain_state.mask.get(n, torch.zeros_like(state.mask[n]))) for n in state.mask
    )
    driver.detach()
    plain_driver.detach()


def test_bound_aware_scores_need_a_bound(tiny_lock_config):
    with pytest.raises(ValueError, match="bound_aware_scores needs weight_bound"):
        tiny_lock_config(bound_aware_scores=True)


def test_bound_jitter_needs_a_bound_and_a_share_below_one(tiny_lock_config):
    with pytest.raises(ValueError, match="bound_jitter needs weight_bound"):
        tiny_lock_config(bound_jitter=0.1)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"bound_jitter must be in \[0, 1\)"):
            tiny_lock_config(weight_bound=2.5, bound_jitter=bad)


def test_jittered_edges_are_seeded_per_entry_and_inside_the_bound(tiny_lock_config, toy_domains):
    args = tiny_lock_config(weight_bound=1.0, bound_jitter=0.2)
    _, _, _, driver, _, _ = _driver(args, toy_domains)
    _, _, _, again, _, _ = _driver(tiny_lock_config(weight_bound=1.0, bound_jitter=0.2), toy_domains)
    plain = _driver(tiny_lock_config(weight_bound=1.0), toy_domains)[3]
    for name, (low, high) in driver.weight_ranges.items():
        assert torch.equal(low, again.weight_ranges[name][0]) and torch.equal(high, again.weight_ranges[name][1])
        plain_low, plain_high = plain.weight_ranges[name]
        half = (plain_high.min() - plain_low.max()) / 2  # the plain edges: the range's two ends, or beyond them
        for jittered, edge, beyond in (
            (low, plain_low, plain_low < plain_low.max()),
            (high, plain_high, plain_high > plain_high.min()),
        ):
            inward = (jittered - edge).abs()
            assert torch.equal(jittered[beyond], edge[beyond]), name  # an entry beyond the bound keeps its value
            assert bool((inward[~beyond] <= 0.2 * half + 1e-6).all()), name  # at most a fifth of the way inside
            assert bool(((jittered - edge)[~beyond] * (1 if jittered is low else -1) >= 0).all()), name  # inside
            assert len(torch.unique(jittered[~beyond])) > 0.9 * int((~beyond).sum()), name  # one edge per entry
    for detached in (driver, again, plain):
        detached.detach()


def test_a_repair_step_runs_at_its_own_rate_and_the_schedule_is_put_back(tiny_lock_config, toy_domains):
    args = tiny_lock_config(repair_learning_rate=0.123)
    _, data, state, driver, optimizer, terms = _driver(args, toy_domains)
    driver.select_round(state, 0)
    assert _update(driver, state, optimizer, terms, data, repairing=True) == [0.123]
    assert [group["lr"] for group in optimizer.param_groups] == [args.learning_rate]
    assert _update(driver, state, optimizer, terms, data) == [args.learning_rate]


def test_a_budget_the_candidates_cannot_hold_is_refused(tiny_lock_config):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = tiny_lock_config()
    candidates = candidate_weights(encoder, args)
    total = sum(p.numel() for p in candidates.values())
    with pytest.raises(ValueError, match="exceeds the .* candidate weights"):
        check_budget(candidates, tiny_lock_config(num_rounds=total, weights_per_round=2, layers_per_round=99))
    with pytest.raises(ValueError, match="largest candidate layer"):
        check_budget(candidates, tiny_lock_config(weights_per_round=total, layers_per_round=1))
    # a share is named as the user gave it, not as the weights_per_round it was resolved into (found on the user's
    # path: "lower it" pointed at a setting never set)
    shared = tiny_lock_config(weight_budget_share=1.0, layers_per_round=1, num_rounds=1)
    shared.weights_per_round = weights_per_round_for(candidates, shared)
    with pytest.raises(ValueError, match=r"^weight_budget_share=1.0 \(\d+ weights a round .*lower the share"):
        check_budget(candidates, shared)


def test_a_budget_share_is_that_share_of_the_candidates_spread_over_the_rounds(tiny_lock_config):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    candidates = candidate_weights(encoder, tiny_lock_config())
    total = sum(p.numel() for p in candidates.values())
    assert weights_per_round_for(candidates, tiny_lock_config(weights_per_round=7)) == 7  # no share: as given
    args = tiny_lock_config(weights_per_round=7, weight_budget_share=0.1, num_rounds=3)
    assert weights_per_round_for(candidates, args) == int(0.1 * total / 3)  # rounded down; the share wins
    assert weights_per_round_for(candidates, tiny_lock_config(weight_budget_share=1e-9)) == 1  # at least one
