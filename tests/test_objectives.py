"""Lock objectives: the information measures' math on toy features, masked gradients, a tiny end-to-end lock."""

import pytest
import torch

from hf_encoderlock.data.lock_tensors import preprocess_domain
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.masking import MaskedParameterGuard
from hf_encoderlock.lock.objectives import LockHeads, PaperObjective, build_objective
from hf_encoderlock.lock.objectives.information import (
    InformationObjective,
    InformationTermsConfig,
    class_mmd,
    ridge_r2,
    soft_knn_excess,
    standardize,
)
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from hf_encoderlock.probing.heads import HeadTrainingConfig, best_head, train_heads

from .helpers import toy_domain

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


def test_ridge_r2_is_one_for_perfectly_linear_labels_and_small_for_noise():
    features, labels = _toy(0.0, n=900, d=4)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert float(ridge_r2(standardize(torch.cat([one_hot, features], 1)), labels, 1e-4)) > 0.99
    assert float(ridge_r2(standardize(features), labels, 1e-2)) < 0.02


def _heads(dim: int, classes: int) -> LockHeads:
    torch.manual_seed(0)
    return LockHeads(authorized=torch.nn.Linear(dim, classes), adversary=torch.nn.Linear(dim, classes))


def test_information_objective_normalises_by_first_value_and_scores_prohibited_only():
    objective = InformationObjective(InformationTermsConfig(knn_weight=1.0))
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


def test_information_objective_needs_prohibited_labels():
    a, labels = _toy(1.0)
    with pytest.raises(ValueError, match="labels"):
        InformationObjective().terms(a, labels, a, None, _heads(a.shape[1], 3))


def test_build_objective_from_config(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert isinstance(build_objective(EncoderLockConfig(**base)), PaperObjective)
    objective = build_objective(
        EncoderLockConfig(objective="information", info_knn_weight=0.5, info_mmd_bandwidths=[1.0], **base)
    )
    assert isinstance(objective, InformationObjective)
    assert objective.config.weights == {"r2": 1.0, "mmd": 1.0, "knn": 0.5}
    assert objective.config.mmd_bandwidths == (1.0,)
    with pytest.raises(ValueError, match="info_"):
        EncoderLockConfig(objective="information", info_r2_weight=0, info_mmd_weight=0, **base)


def test_information_gradients_reach_only_selected_weights():
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    data = preprocess_domain(encoder, toy_domain(24, 0, "red"), "red")
    name, weight = next((n, p) for n, p in encoder.named_parameters() if p.dim() == 2 and "layers.0" in n)
    mask = {name: torch.zeros_like(weight, dtype=torch.bool)}
    mask[name].view(-1)[:7] = True
    guard = MaskedParameterGuard(encoder, freeze_unselected=False)
    guard.install(mask)
    features = encoder(data.pixel_values)
    terms = InformationObjective(InformationTermsConfig(knn_weight=1.0)).terms(
        features, data.labels, features, data.labels, _heads(features.shape[1], 3)
    )
    terms.total.backward()
    guard.mask_gradients()
    assert weight.grad.abs().sum() > 0 and bool((weight.grad[~mask[name]] == 0).all())
    for other, param in encoder.named_parameters():
        if other != name and param.grad is not None:
            assert float(param.grad.abs().sum()) == 0.0, other
    guard.remove()


def _fresh_probe_accuracy(trainer: EncoderLockTrainer, train, test) -> float:
    features_train, features_test = trainer.encode(train), trainer.encode(test)
    heads = train_heads(
        features_train,
        train.labels,
        features_test,
        test.labels,
        kind="linear",
        lrs=(3e-2,),
        weight_decays=(0.0,),
        seeds=(0,),
        hidden=(32,),
        num_classes=train.num_classes,
        config=HeadTrainingConfig(epochs=150),
    )
    return best_head(heads).val_accuracy


def lock_between_fresh_probes(trainer: EncoderLockTrainer, probe_sets) -> tuple[float, float, float, float]:
    """Fresh-probe accuracy (prohibited, authorized) before the lock, train the lock, then the same after it."""

    def probe() -> tuple[float, float]:
        return (
            _fresh_probe_accuracy(trainer, probe_sets["p_train"], probe_sets["p_test"]),
            _fresh_probe_accuracy(trainer, probe_sets["a_train"], probe_sets["a_test"]),
        )

    before = probe()
    trainer.train()
    return (*before, *probe())


def test_tiny_lock_makes_fresh_probe_fail_on_prohibited_and_keeps_authorized(tmp_path):
    torch.manual_seed(0)
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    authorized, prohibited = toy_domain(96, 0, "red"), toy_domain(96, 1, "green")
    probe_sets = {
        key: preprocess_domain(encoder, toy_domain(60, seed, style), key)
        for key, seed, style in (
            ("a_train", 10, "red"),
            ("a_test", 11, "red"),
            ("p_train", 12, "green"),
            ("p_test", 13, "green"),
        )
    }
    args = EncoderLockConfig(
        output_dir=str(tmp_path / "run"),
        objective="information",
        num_rounds=6,
        update_steps_per_round=10,
        weights_per_round=300,
        layers_per_round=3,
        per_device_train_batch_size=64,
        score_batches=1,
        challenge_every=0,
        adversary_epochs=20,
        adversary_seeds=1,
        adversary_kinds=["linear"],
        best_model_criterion="last",
        use_cpu=True,
        report_to="none",
        seed=0,
        disable_tqdm=True,
        logging_steps=100,
    )
    trainer = EncoderLockTrainer(encoder, args, authorized, prohibited, "red", "green")
    before_p, before_a, after_p, after_a = lock_between_fresh_probes(trainer, probe_sets)
    assert before_p > 0.9 and before_a > 0.9
    assert after_p < before_p - 0.3
    assert after_a > before_a - 0.1


def test_combined_authorized_domains_keep_each_domains_classes_apart():
    from hf_encoderlock.data.lock_tensors import combine_labelled_domains

    combined = combine_labelled_domains(
        {"red": toy_domain(6, 0, "red"), "green": toy_domain(4, 1, "green", num_classes=2)}
    )
    assert combined.features["label"].names == ["red/c0", "red/c1", "red/c2", "green/c0", "green/c1"]
    assert combined["label"] == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    single = toy_domain(5, 0, "red")
    assert combine_labelled_domains({"red": single}) is single


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
    assert not InformationObjective().uses_reference_features and not PaperObjective().uses_reference_features


def test_prohibited_poolings_concatenate_features_from_one_pass(tmp_path):
    base = dict(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", per_device_train_batch_size=8)
    with pytest.raises(ValueError, match="prohibited_poolings"):
        EncoderLockConfig(prohibited_poolings=["cls", "mean"], **base)
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = EncoderLockConfig(objective="information", prohibited_poolings=["cls", "mean"], **base)
    trainer = EncoderLockTrainer(encoder, args, toy_domain(30, 0, "red"), toy_domain(30, 1, "green"), "red", "green")
    pixels = torch.cat([trainer.lock_authorized.pixel_values[:3], trainer.lock_prohibited.pixel_values[:5]])
    a_features, p_features = trainer._lock_features(encoder, pixels, 3)
    dim = encoder(pixels[:1]).shape[1]
    assert a_features.shape == (3, dim) and p_features.shape == (5, 2 * dim)
    assert torch.allclose(p_features[:, dim:], encoder.features(pixels[3:], "mean"), atol=1e-5)
