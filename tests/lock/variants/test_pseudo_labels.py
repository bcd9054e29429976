"""The unsupervised variant's pseudo-labels: clusters recovered, prohibited labels never read, a tiny lock."""

import json

import pytest
import torch
from datasets import Value

from hf_encoderlock.data.lock_tensors import LockDataError
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, EncoderLockTrainer
from hf_encoderlock.lock.variants.pseudo_labels import cluster_pseudo_labels
from tests.helpers import (
    FRESH_PROBE_LOCK,
    VARIANT_LOCK,
    fresh_probe_sets,
    lock_between_fresh_probes,
    toy_domain,
    unlabelled,
)


def test_pseudo_labels_recover_separated_clusters_and_refuse_too_few_images():
    from sklearn.metrics import adjusted_rand_score

    generator = torch.Generator().manual_seed(0)
    truth = torch.arange(90) % 3
    features = torch.randn(90, 5, generator=generator) * 0.1 + 4.0 * torch.nn.functional.one_hot(truth, 5).float()
    labels = cluster_pseudo_labels(features, 3, seed=0, restarts=2)
    assert adjusted_rand_score(truth.numpy(), labels.numpy()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="too few"):
        cluster_pseudo_labels(features[:5], 3, seed=0, restarts=2)


def test_unsupervised_trainer_never_reads_prohibited_labels(tmp_path, tiny_lock_config):
    prohibited = toy_domain(48, 1, "green")
    # Labels that any read would refuse (out of range for the ClassLabel): the unsupervised run must not see them.
    poisoned = prohibited.cast_column("label", Value("int64")).map(lambda row: {"label": -7})
    for dataset in (unlabelled(prohibited), poisoned):
        encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
        trainer = EncoderLockTrainer(
            encoder,
            tiny_lock_config(preset=VARIANT_LOCK, variant="unsupervised", objective="information"),
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
            tiny_lock_config(preset=VARIANT_LOCK, variant="unsupervised"),
            toy_domain(48, 0, "red"),
            None,
        )


def test_unsupervised_lock_makes_fresh_probe_fail_on_prohibited_and_keeps_authorized(tiny_lock_config):
    torch.manual_seed(0)
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    probe_sets = fresh_probe_sets(encoder)
    args = tiny_lock_config(
        preset={**VARIANT_LOCK, **FRESH_PROBE_LOCK}, variant="unsupervised", objective="information"
    )  # the supervised test's lock (test_information.py), on unlabelled prohibited data
    trainer = EncoderLockTrainer(encoder, args, toy_domain(96, 0, "red"), unlabelled(toy_domain(96, 1, "green")))
    before_p, before_a, after_p, after_a = lock_between_fresh_probes(trainer, probe_sets)
    assert before_p > 0.9 and before_a > 0.9
    assert after_p < before_p - 0.3, (before_p, after_p)
    assert after_a > before_a - 0.1, (before_a, after_a)
