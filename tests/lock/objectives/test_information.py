"""The information objective: its measures' math on toy features, masked gradients, a tiny end-to-end lock."""

import pytest
import torch

from hf_encoderlock.data.lock_tensors import preprocess_domain
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.masking import MaskedParameterGuard
from hf_encoderlock.lock.objectives import LockHeads, PaperObjective, build_objective
from hf_encoderlock.lock.objectives.information import (
    REFERENCE_FLOOR,
    InformationObjective,
    InformationTermsConfig,
    class_mmd,
    ridge_r2,
    soft_knn_excess,
    standardize,
    whiten,
)
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from tests.helpers import FRESH_PROBE_LOCK, fresh_probe_sets, lock_between_fresh_probes, toy_domain

MEASURES = {
    "r2": lambda z, y: ridge_r2(z, y, ridge=1e-2),
    "mmd": lambda z, y: class_mmd(z, y, (0.5, 1.0, 2.0)),
    "knn": lambda z, y: soft_knn_excess(z, y, temperature=0.1),
}


def _toy(separation: float, n: int = 600, d: int = 8, classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    features = torch.randn(n, d, generator=generator)
    features[:, 0] += separation * labels.float()
    return features, labels


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_measure_near_zero_when_class_conditionals_coincide(name):
    measure = MEASURES[name]
    same = float(measure(standardize(_toy(0.0)[0]), _toy(0.0)[1]))
    separated = float(measure(standardize(_toy(3.0)[0]), _toy(3.0)[1]))
    assert separated > 0.1 * (1 if name != "mmd" else 0.1)
    assert abs(same) < 0.05 * separated


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_measure_invariant_to_per_dimension_rescaling(name):
    features, labels = _toy(2.0)
    scales = torch.logspace(-2, 2, features.shape[1])
    shift = torch.randn(features.shape[1])
    plain = MEASURES[name](standardize(features), labels)
    rescaled = MEASURES[name](standardize(features * scales + shift), labels)
    assert torch.allclose(plain, rescaled, rtol=1e-3, atol=1e-5)


def _hidden_in_a_low_variance_direction(n: int = 600, seed: int = 0):
    """Two nearly equal dimensions whose small difference carries the classes, next to noise dimensions."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    shared = 10 * torch.randn(n, generator=generator)
    difference = 0.5 * labels.float() + 0.1 * torch.randn(n, generator=generator)
    noise = torch.randn(n, 4, generator=generator)
    return torch.cat([(shared + difference)[:, None], shared[:, None], noise], dim=1), labels


@pytest.mark.parametrize("name", ["mmd", "knn"])
def test_whitening_finds_class_information_that_standardising_misses(name):
    features, labels = _hidden_in_a_low_variance_direction()
    standardised = float(MEASURES[name](whiten(features, 1.0), labels))
    whitened = float(MEASURES[name](whiten(features, 0.01), labels))
    assert whitened > 5 * max(standardised, 1e-3)


def test_whitening_is_invariant_to_invertible_linear_maps_and_shrinkage_one_standardises():
    features, labels = _toy(2.0, d=5)
    mixing = torch.randn(5, 5, generator=torch.Generator().manual_seed(1)) + 3 * torch.eye(5)
    for name in ("mmd", "knn"):
        plain = MEASURES[name](whiten(features, 0.0), labels)
        mixed = MEASURES[name](whiten(features @ mixing, 0.0), labels)
        assert torch.allclose(plain, mixed, rtol=1e-3, atol=1e-5)
    assert torch.equal(whiten(features, 1.0), standardize(features))
    whitened = whiten(features, 0.0)
    assert torch.allclose(whitened.T @ whitened / len(whitened), torch.eye(5), atol=1e-4)


def test_whitened_objective_from_config_is_finite_when_features_outnumber_the_batch(tmp_path):
    config = EncoderLockConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", info_whitening_shrinkage=0.1)
    objective = build_objective(config)
    assert objective.config.whitening_shrinkage == 0.1
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(32, 64, generator=generator, requires_grad=True)  # 64 dimensions, a batch of 32
    labels = torch.arange(32) % 4
    raw = objective.measures(features, labels)
    total = sum(raw.values())
    total.backward()
    assert all(bool(torch.isfinite(v)) for v in raw.values())
    assert bool(torch.isfinite(features.grad).all()) and float(features.grad.abs().sum()) > 0


def test_ridge_r2_is_one_for_perfectly_linear_labels_and_small_for_noise():
    features, labels = _toy(0.0, n=900, d=4)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert float(ridge_r2(standardize(torch.cat([one_hot, features], 1)), labels, 1e-4)) > 0.99
    assert float(ridge_r2(standardize(features), labels, 1e-2)) < 0.02


def _heads(dim: int, classes: int) -> LockHeads:
    torch.manual_seed(0)
    return LockHeads(authorized=torch.nn.Linear(dim, classes), adversary=torch.nn.Linear(dim, classes))


def test_information_objective_normalises_by_first_value_and_scores_prohibited_only():
    objective = InformationObjective(InformationTermsConfig(knn_weight=1.0, preserve_weight=0.0))
    a, a_labels = _toy(3.0, seed=1)
    p, p_labels = _toy(3.0, seed=2)
    first = objective.terms(a, a_labels, p, p_labels, _heads(a.shape[1], 3))
    assert float(first.prohibited) == pytest.approx(3.0, rel=1e-5)  # three terms, each 1 at the start
    assert set(objective.reference) == {"r2", "mmd", "knn"}
    q, q_labels = _toy(0.0, seed=3)
    later = objective.terms(a, a_labels, q, q_labels, _heads(a.shape[1], 3))
    assert float(later.prohibited) < 0.1
    assert float(later.authorized) == pytest.approx(float(first.authorized))
    assert float(later.total) == pytest.approx(float(later.authorized + later.prohibited), rel=1e-5)


def test_a_term_that_starts_near_zero_is_normalised_by_the_floor_not_blown_up():
    """Features without class information (a random-init encoder's) give an MMD of about 0, even below: dividing by
    that first value would multiply the term by up to 1 / eps."""
    objective = InformationObjective(InformationTermsConfig(knn_weight=1.0, preserve_weight=0.0))
    a, a_labels = _toy(3.0, seed=1)
    p, p_labels = _toy(0.0, seed=2)  # no class structure at all
    first = objective.terms(a, a_labels, p, p_labels, _heads(a.shape[1], 3))
    assert objective.reference["mmd"] == REFERENCE_FLOOR and objective.reference["knn"] == REFERENCE_FLOOR
    q, q_labels = _toy(0.0, seed=4)
    later = objective.terms(a, a_labels, q, q_labels, _heads(a.shape[1], 3))
    for terms in (first, later):
        assert abs(float(terms.prohibited)) < 10  # each term within a few units, not ~1 / eps


def test_information_objective_needs_prohibited_labels():
    a, labels = _toy(1.0)
    with pytest.raises(ValueError, match="labels"):
        InformationObjective(InformationTermsConfig(preserve_weight=0.0)).terms(
            a, labels, a, None, _heads(a.shape[1], 3)
        )


def test_build_objective_from_config(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert isinstance(build_objective(EncoderLockConfig(**base)), InformationObjective)  # the tuned lock's default
    assert isinstance(build_objective(EncoderLockConfig(objective="paper", **base)), PaperObjective)
    assert isinstance(build_objective(EncoderLockConfig.reference(**base)), PaperObjective)
    objective = build_objective(
        EncoderLockConfig(objective="information", info_knn_weight=0.5, info_mmd_bandwidths=[1.0], **base)
    )
    assert isinstance(objective, InformationObjective)
    assert objective.config.weights == {"r2": 1.0, "mmd": 1.0, "knn": 0.5}
    assert objective.config.mmd_bandwidths == (1.0,)
    with pytest.raises(ValueError, match="info_"):
        EncoderLockConfig(objective="information", info_r2_weight=0, info_mmd_weight=0, info_knn_weight=0, **base)


def test_information_gradients_reach_only_selected_weights():
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    data = preprocess_domain(encoder, toy_domain(24, 0, "red"), "red")
    name, weight = next((n, p) for n, p in encoder.named_parameters() if p.dim() == 2 and "layers.0" in n)
    mask = {name: torch.zeros_like(weight, dtype=torch.bool)}
    mask[name].view(-1)[:7] = True
    guard = MaskedParameterGuard(encoder, freeze_unselected=False)
    guard.install(mask)
    features = encoder(data.pixel_values)
    terms = InformationObjective(InformationTermsConfig(knn_weight=1.0, preserve_weight=0.0)).terms(
        features, data.labels, features, data.labels, _heads(features.shape[1], 3)
    )
    terms.total.backward()
    guard.mask_gradients()
    assert weight.grad.abs().sum() > 0 and bool((weight.grad[~mask[name]] == 0).all())
    for other, param in encoder.named_parameters():
        if other != name and param.grad is not None:
            assert float(param.grad.abs().sum()) == 0.0, other
    guard.remove()


def test_tiny_lock_makes_fresh_probe_fail_on_prohibited_and_keeps_authorized(tiny_lock_config):
    torch.manual_seed(0)
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    authorized, prohibited = toy_domain(96, 0, "red"), toy_domain(96, 1, "green")
    probe_sets = fresh_probe_sets(encoder)
    args = tiny_lock_config(preset=FRESH_PROBE_LOCK, objective="information")
    trainer = EncoderLockTrainer(encoder, args, authorized, prohibited, "red", "green")
    before_p, before_a, after_p, after_a = lock_between_fresh_probes(trainer, probe_sets)
    assert before_p > 0.9 and before_a > 0.9
    assert after_p < before_p - 0.3
    assert after_a > before_a - 0.1


def test_feature_preservation_term_uses_the_unlocked_encoders_features():
    objective = InformationObjective(InformationTermsConfig(preserve_weight=2.0))
    assert objective.uses_reference_features
    a, labels = _toy(2.0)
    heads = _heads(a.shape[1], 3)
    same = objective.terms(a, labels, a, labels, heads, authorized_reference=a)
    moved = objective.terms(a + 1.0, labels, a, labels, heads, authorized_reference=a)
    assert same.logs["authorized_drift"] == pytest.approx(0.0, abs=1e-6)
    assert moved.logs["authorized_drift"] > 0 and float(moved.authorized) > float(same.authorized)
    with pytest.raises(ValueError, match="unlocked"):
        objective.terms(a, labels, a, labels, heads)
    assert not InformationObjective(InformationTermsConfig(preserve_weight=0.0)).uses_reference_features
    assert InformationObjective().uses_reference_features  # the tuned default holds the authorized features
    assert not PaperObjective().uses_reference_features
