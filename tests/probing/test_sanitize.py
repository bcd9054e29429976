"""Data-free weight sanitisers: each edits what it says, per tensor, on a copy."""

import pytest
import torch
from torch import nn

from hf_encoderlock.probing.sanitize import (
    SANITIZERS,
    SanitizeError,
    count_outliers,
    piled_up,
    robust_scale,
    robust_z,
    sanitizable_weights,
    sanitize_module,
    telltale,
)


def planted(value: float = 50.0) -> tuple[nn.Module, tuple[int, int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 8)).requires_grad_(False)
    with torch.no_grad():
        model[0].weight[3, 5] = value
    return model, (3, 5)


def test_only_weight_matrices_and_kernels_are_candidates():
    model, _ = planted()
    assert [name for name, _ in sanitizable_weights(model)] == ["0.weight", "2.weight"]


def test_a_planted_outlier_is_counted_and_reset_to_the_median():
    model, (row, col) = planted()
    assert count_outliers(model, 6.0)["0.weight"] >= 1
    assert robust_z(model[0].weight)[row, col] > 100
    cleaned = sanitize_module(model, "reset_outliers", 6.0)
    assert cleaned[0].weight[row, col] == pytest.approx(float(model[0].weight.median()))
    assert count_outliers(cleaned, 6.0)["0.weight"] == 0
    assert model[0].weight[row, col] == 50.0  # the original is untouched
    # ordinary entries stay bit-identical
    mask = torch.ones_like(model[0].weight, dtype=torch.bool)
    mask[row, col] = False
    inside = robust_z(model[0].weight).abs() <= 6.0
    assert torch.equal(cleaned[0].weight[mask & inside], model[0].weight[mask & inside])
    assert torch.equal(cleaned[1].weight, model[1].weight)  # a norm's weight is not a candidate


def test_clipping_bounds_every_entry_at_the_threshold():
    model, (row, col) = planted()
    cleaned = sanitize_module(model, "clip_outliers", 4.0)
    assert robust_z(cleaned[0].weight).abs().max() <= 4.0 + 1e-4
    assert 0 < cleaned[0].weight[row, col] < 50.0


def test_pruning_zeroes_the_largest_magnitudes():
    model, (row, col) = planted()
    cleaned = sanitize_module(model, "prune_largest", 1e-3)  # 0.1% of 4,096 entries: the 4 largest
    assert cleaned[0].weight[row, col] == 0.0
    assert int((cleaned[0].weight == 0).sum()) == 4
    assert int((cleaned[2].weight == 0).sum()) == 1  # at least one entry, even in a small tensor


def test_noise_is_seeded_and_small():
    model, _ = planted()
    a, b = (sanitize_module(model, "gaussian_noise", 0.05, seed=1) for _ in range(2))
    assert torch.equal(a[2].weight, b[2].weight)
    change = (a[2].weight - model[2].weight).abs().max()
    _, scale = robust_scale(model[2].weight)
    assert 0 < change < 6 * 0.05 * scale  # noise of 0.05 robust std never reaches 6 of its own std here


def test_int8_absmax_round_trip_is_dominated_by_the_outlier():
    model, (row, col) = planted()
    cleaned = sanitize_module(model, "int8_requantize", 100.0)
    assert cleaned[0].weight[row, col] == pytest.approx(50.0, rel=1e-3)
    assert len(torch.unique(cleaned[0].weight)) <= 255
    # the absmax scale (50 / 127) rounds most ordinary weights of this layer to zero
    assert float((cleaned[0].weight == 0).float().mean()) > 0.5
    percentile = sanitize_module(model, "int8_requantize", 99.9)
    assert float((percentile[0].weight == 0).float().mean()) < 0.2


def test_entries_clamped_onto_one_bound_are_found_and_reset_but_trained_weights_are_not():
    model, _ = planted(value=0.0)
    weight = model[0].weight
    assert int(piled_up(weight, 4.0).sum()) == 0  # weights drawn at random never share a value
    median, scale = robust_scale(weight)
    bound = float(median + 2.5 * scale)
    with torch.no_grad():
        weight[0, :10] = bound  # what a clamp at the bound leaves behind
        weight[1, :3] = -bound  # three of a kind: below 4 times the typical multiplicity of 1
    flagged = piled_up(weight, 4.0)
    assert flagged[0, :10].all() and int(flagged.sum()) == 10
    cleaned = sanitize_module(model, "reset_piled_up", 4.0)
    assert torch.equal(cleaned[0].weight[0, :10], torch.full((10,), float(cleaned[0].weight.median())))
    assert torch.equal(cleaned[0].weight[1:], weight[1:]) and torch.equal(cleaned[2].weight, model[2].weight)
    # zeros (pruned or padded weights) repeat in ordinary checkpoints and are left alone
    with torch.no_grad():
        weight[2, :20] = 0.0
    assert not piled_up(weight, 4.0)[2, :20].any()


def test_piled_up_values_are_judged_against_the_tensors_own_multiplicity():
    # a half-precision tensor repeats values everywhere: only a value far more frequent than its typical one counts
    torch.manual_seed(0)
    weight = (torch.randn(256, 256) * 0.02).half()
    weight[0, :200] = weight.max()
    flagged = piled_up(weight, 4.0)
    assert flagged[0, :200].all()
    assert float(flagged.float().mean()) < 0.1  # only the commonest values near the median, which a reset barely moves


@pytest.mark.parametrize("name", sorted(SANITIZERS))
def test_every_sanitiser_keeps_shapes_and_dtypes(name):
    model, _ = planted()
    cleaned = sanitize_module(model, name, SANITIZERS[name].strengths[0])
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), cleaned.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape and p1.dtype == p2.dtype


def test_bad_requests_name_the_problem():
    model, _ = planted()
    with pytest.raises(SanitizeError, match="unknown sanitiser 'shave'"):
        sanitize_module(model, "shave", 1.0)
    with pytest.raises(SanitizeError, match="positive strength"):
        sanitize_module(model, "reset_outliers", 0.0)


def test_a_tensor_is_tell_tale_past_twice_the_originals_count_or_with_any_when_unknown():
    locked = {"a.weight": 5, "b.weight": 4, "c.weight": 0, "d.weight": 1}
    original = {"a.weight": 2, "b.weight": 2, "c.weight": 0}
    assert telltale(locked, original) == ["a.weight", "d.weight"]
    assert telltale(locked, None) == ["a.weight", "b.weight", "d.weight"]
