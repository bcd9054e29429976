"""The contrastive objective (unsupervised variant): InfoNCE, its terms without prohibited labels, a tiny lock."""

import numpy as np
import pytest
import torch

from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.objectives import LockHeads
from hf_encoderlock.lock.objectives.contrastive import ContrastiveObjective, info_nce
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from tests.helpers import VARIANT_LOCK, toy_domain, unlabelled


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


def test_contrastive_reference_variant_trains_on_unlabelled_data(tiny_lock_config):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = tiny_lock_config(preset=VARIANT_LOCK, variant="unsupervised", objective="contrastive", logging_steps=1)
    trainer = EncoderLockTrainer(encoder, args, toy_domain(48, 0, "red"), unlabelled(toy_domain(48, 1, "green")))
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    trainer.train()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in encoder.named_parameters())
    assert 0 < changed <= 2 * 20
    logged = [entry for entry in trainer.state.log_history if "lock/contrastive_prohibited" in entry]
    assert logged, "the contrastive terms are logged"
