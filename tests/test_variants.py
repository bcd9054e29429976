"""Unsupervised and zero-shot variants: contrastive objective, augmented views, pseudo-labels, generators."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature

from hf_encoderlock.data.lock_tensors import LockDataError, preprocess_domain
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.objectives import LockHeads
from hf_encoderlock.lock.objectives.contrastive import ContrastiveObjective, info_nce
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, EncoderLockTrainer
from hf_encoderlock.lock.variants.augmentations import AugmentationConfig, augmented_view
from hf_encoderlock.lock.variants.generators import (
    GENERATORS,
    DomainShiftGenerator,
    GlyphGenerator,
    ShapeGenerator,
    TextToImageGenerator,
    generate_prohibited,
)
from hf_encoderlock.lock.variants.pseudo_labels import cluster_pseudo_labels

from .helpers import toy_domain
from .test_objectives import lock_between_fresh_probes


def _args(tmp_path, **overrides) -> EncoderLockConfig:
    values = dict(
        output_dir=str(tmp_path / "run"),
        num_rounds=2,
        update_steps_per_round=2,
        weights_per_round=20,
        layers_per_round=2,
        per_device_train_batch_size=16,
        score_batches=1,
        challenge_every=1,
        adversary_epochs=5,
        adversary_seeds=1,
        adversary_kinds=["linear"],
        adversary_learning_rates=[1e-2],
        use_cpu=True,
        report_to="none",
        seed=0,
        disable_tqdm=True,
        logging_steps=100,
        num_pseudo_classes=3,
    )
    values.update(overrides)
    return EncoderLockConfig(**values)


def _unlabelled(dataset: Dataset) -> Dataset:
    return dataset.remove_columns("label")


# ------------------------------------------------------------------------------------------ contrastive
def test_info_nce_is_low_for_matching_views_and_high_for_unrelated_ones():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(32, 16, generator=generator)
    matching = info_nce(features, features + 0.01 * torch.randn(32, 16, generator=generator), 0.1)
    unrelated = info_nce(features, torch.randn(32, 16, generator=generator), 0.1)
    assert float(matching) < 0.1 < np.log(32) - 1 < float(unrelated)
    assert float(info_nce(3.0 * features, features, 0.1)) == pytest.approx(
        float(info_nce(features, features, 0.1)), rel=1e-5
    )


def test_contrastive_objective_reads_no_prohibited_labels_and_scores_the_prohibited_contrast():
    generator = torch.Generator().manual_seed(0)
    a, p = torch.randn(20, 8, generator=generator), torch.randn(20, 8, generator=generator)
    labels = torch.arange(20) % 3
    heads = LockHeads(authorized=torch.nn.Linear(8, 3), adversary=torch.nn.Linear(8, 3))
    objective = ContrastiveObjective(alpha=10.0, temperature=0.8)
    terms = objective.terms(a, labels, p, None, heads, authorized_views=a, prohibited_views=p.flip(0))
    assert float(terms.prohibited) == pytest.approx(terms.logs["contrastive_prohibited"])
    expected = terms.authorized + torch.log1p(10.0 * terms.logs["contrastive_authorized"] / terms.prohibited)
    assert float(terms.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    with pytest.raises(ValueError, match="augmented views"):
        objective.terms(a, labels, p, None, heads)


def test_augmented_view_is_seeded_bounded_and_identity_at_zero_strength():
    pixels = torch.rand(6, 3, 16, 16) * 2 - 1  # normalised with mean 0.5, std 0.5
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.5)
    config = AugmentationConfig()
    first = augmented_view(pixels, mean, std, config, torch.Generator().manual_seed(1))
    again = augmented_view(pixels, mean, std, config, torch.Generator().manual_seed(1))
    other = augmented_view(pixels, mean, std, config, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert first.shape == pixels.shape and first.min() >= -1 - 1e-6 and first.max() <= 1 + 1e-6
    identity = AugmentationConfig(crop_scale=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0, noise=0.0)
    same = augmented_view(pixels, mean, std, identity, torch.Generator().manual_seed(1))
    assert torch.allclose(same, pixels, atol=1e-5)


# ---------------------------------------------------------------------------------------- pseudo-labels
def test_pseudo_labels_recover_separated_clusters_and_refuse_too_few_images():
    from sklearn.metrics import adjusted_rand_score

    generator = torch.Generator().manual_seed(0)
    truth = torch.arange(90) % 3
    features = torch.randn(90, 5, generator=generator) * 0.1 + 4.0 * torch.nn.functional.one_hot(truth, 5).float()
    labels = cluster_pseudo_labels(features, 3, seed=0, restarts=2)
    assert adjusted_rand_score(truth.numpy(), labels.numpy()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="too few"):
        cluster_pseudo_labels(features[:5], 3, seed=0, restarts=2)


def test_unsupervised_trainer_never_reads_prohibited_labels(tmp_path):
    prohibited = toy_domain(48, 1, "green")
    # Labels that any read would refuse (out of range for the ClassLabel): the unsupervised run must not see them.
    poisoned = prohibited.cast_column("label", Value("int64")).map(lambda row: {"label": -7})
    for dataset in (_unlabelled(prohibited), poisoned):
        encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
        trainer = EncoderLockTrainer(
            encoder,
            _args(tmp_path, variant="unsupervised", objective="information"),
            toy_domain(48, 0, "red"),
            dataset,
            "red",
            "green",
        )
        assert trainer.pseudo_labelled and trainer.lock_prohibited.num_classes == 3
        assert set(trainer.lock_prohibited.labels.tolist()) | set(trainer.val_prohibited.labels.tolist()) == {0, 1, 2}
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / LOCK_CONFIG_FILE).read_text())
    assert summary["variant"] == "unsupervised"
    assert summary["prohibited"][0]["labels"] == "none read"
    assert "- green" in (tmp_path / "out" / "README.md").read_text()  # the card names the domain
    with pytest.raises(LockDataError, match="needs a prohibited dataset"):
        EncoderLockTrainer(
            tiny_vit_encoder(seed=0, image_size=16, patch_size=4),
            _args(tmp_path, variant="unsupervised"),
            toy_domain(48, 0, "red"),
            None,
        )


def test_contrastive_reference_variant_trains_on_unlabelled_data(tmp_path):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = _args(tmp_path, variant="unsupervised", objective="contrastive", logging_steps=1)
    trainer = EncoderLockTrainer(encoder, args, toy_domain(48, 0, "red"), _unlabelled(toy_domain(48, 1, "green")))
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    trainer.train()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in encoder.named_parameters())
    assert 0 < changed <= 2 * 20
    logged = [entry for entry in trainer.state.log_history if "lock/contrastive_prohibited" in entry]
    assert logged, "the contrastive terms are logged"


def test_unsupervised_lock_makes_fresh_probe_fail_on_prohibited_and_keeps_authorized(tmp_path):
    torch.manual_seed(0)
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    probe_sets = {
        key: preprocess_domain(encoder, toy_domain(60, seed, style), key)
        for key, seed, style in (
            ("a_train", 10, "red"),
            ("a_test", 11, "red"),
            ("p_train", 12, "green"),
            ("p_test", 13, "green"),
        )
    }
    args = _args(
        tmp_path,
        variant="unsupervised",
        objective="information",
        num_rounds=6,
        update_steps_per_round=10,
        weights_per_round=300,
        layers_per_round=3,
        per_device_train_batch_size=64,
        challenge_every=0,
        adversary_epochs=20,
        best_model_criterion="last",
    )
    trainer = EncoderLockTrainer(encoder, args, toy_domain(96, 0, "red"), _unlabelled(toy_domain(96, 1, "green")))
    before_p, before_a, after_p, after_a = lock_between_fresh_probes(trainer, probe_sets)
    assert before_p > 0.9 and before_a > 0.9
    assert after_p < before_p - 0.3, (before_p, after_p)
    assert after_a > before_a - 0.1, (before_a, after_a)


# ------------------------------------------------------------------------------------------- zero-shot
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_deterministic_labelled_and_sized(name):
    authorized = toy_domain(30, 0, "red")
    make = {"shifts": DomainShiftGenerator, "shapes": ShapeGenerator, "glyphs": GlyphGenerator}[name]
    generator = make() if name == "shifts" else make(image_size=16)
    first, again = generator.generate(40, 3, authorized), generator.generate(40, 3, authorized)
    assert len(first) == 40 and first[0]["image"].size == (16, 16) and first[0]["image"].mode == "RGB"
    assert first["label"] == again["label"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first["image"], again["image"]))
    assert len(set(first["label"])) == (3 if name == "shifts" else 10)
    other = generator.generate(40, 4, authorized)
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first["image"], other["image"]))


def test_generate_prohibited_combines_generators_and_rejects_bad_requests():
    authorized = toy_domain(30, 0, "red")
    data = generate_prohibited(["shifts", "shapes"], authorized, 50, 0)
    assert len(data) == 50
    assert data.features["label"].names[:4] == ["shifts/c0", "shifts/c1", "shifts/c2", "shapes/circle"]
    with pytest.raises(ValueError, match="unknown zero-shot generators"):
        generate_prohibited(["paint"], authorized, 10, 0)
    with pytest.raises(ValueError, match="needs authorized data"):
        DomainShiftGenerator().generate(10, 0, None)


def test_text_to_image_generator_explains_its_optional_dependency():
    import importlib.util

    if importlib.util.find_spec("diffusers") is not None:  # pragma: no cover - it would download a model
        pytest.skip("diffusers is installed")
    with pytest.raises(ImportError, match="pip install diffusers"):
        TextToImageGenerator({"cat": "a photo of a cat"}).generate(2, 0)


def test_zero_shot_trainer_generates_its_prohibited_data_and_records_the_generators(tmp_path):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = _args(
        tmp_path,
        variant="zero-shot",
        objective="information",
        zero_shot_images=60,
        zero_shot_generators=["shifts", "shapes"],
    )
    trainer = EncoderLockTrainer(encoder, args, toy_domain(48, 0, "red"), None, "red")
    assert len(trainer.lock_prohibited) + len(trainer.val_prohibited) == 60
    assert trainer.lock_prohibited.num_classes == 3 + 10 and not trainer.pseudo_labelled
    trainer.train()
    summary = trainer.lock_summary()
    trainer.save_model(str(tmp_path / "zero-shot"))
    card = (tmp_path / "zero-shot" / "README.md").read_text()
    assert "variant: zero-shot" in card and "synthetic (shifts, shapes)" in card
    assert summary["variant"] == "zero-shot"
    assert summary["prohibited"] == [{"zero_shot_generators": ["shifts", "shapes"], "images": 60}]
    images_only = Dataset.from_dict(
        {"image": list(toy_domain(40, 5, "green")["image"])}, features=Features({"image": ImageFeature()})
    )
    user = EncoderLockTrainer(
        tiny_vit_encoder(seed=0, image_size=16, patch_size=4), args, toy_domain(48, 0, "red"), images_only
    )
    assert user.pseudo_labelled and user.lock_summary()["prohibited"][0]["zero_shot_generators"] == ["user-supplied"]
