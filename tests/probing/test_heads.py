"""Probe heads: separable data learnt, shuffled labels at chance, seeds, grid metadata, grouping, whitening."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from hf_encoderlock.probing.heads import (
    HeadGroup,
    HeadTrainingConfig,
    accuracy,
    best_head,
    head_accuracy,
    train_head_groups,
    train_heads,
)

FAST = HeadTrainingConfig(epochs=30, batch_size=64, patience=None)
GRID = {"lrs": (1e-2, 3e-2), "weight_decays": (0.0, 1e-3)}


# ------------------------------------------------------------------------------------------------- toy data
def blobs(n, num_classes=4, dim=16, seed=0, spread=0.3, shuffle_labels=False):
    """Gaussian blobs around well-separated random centres (linearly separable at this spread)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(n) % num_classes
    x = centres[labels] + spread * torch.randn(n, dim, generator=g)
    if shuffle_labels:
        labels = torch.randint(0, num_classes, (n,), generator=g)
    return x * 50 + 7, labels  # far from standardised: the heads must standardise themselves


@pytest.mark.parametrize("kind", ["linear", "mlp", "knn"])
def test_heads_reach_100_percent_on_separable_data(kind):
    train_x, train_y = blobs(240, seed=0)
    val_x, val_y = blobs(80, seed=1)
    test_x, test_y = blobs(200, seed=2)
    heads = train_heads(train_x, train_y, val_x, val_y, kind=kind, hidden=(32,), ks=(1, 5), config=FAST, **GRID)
    chosen = best_head(heads)
    assert head_accuracy(chosen.module, test_x, test_y) >= 0.98


@pytest.mark.parametrize("kind", ["linear", "mlp", "knn"])
def test_heads_stay_at_chance_on_shuffled_labels(kind):
    # 4 balanced classes: chance 0.25. On 1,000 independent test labels the accuracy of any fixed head has std
    # sqrt(0.25 * 0.75 / 1000) = 0.0137; 0.25 + 0.06 is more than 4 std above chance.
    train_x, train_y = blobs(400, seed=0, shuffle_labels=True)
    val_x, val_y = blobs(200, seed=1, shuffle_labels=True)
    test_x, test_y = blobs(1000, seed=2, shuffle_labels=True)
    heads = train_heads(train_x, train_y, val_x, val_y, kind=kind, hidden=(32,), ks=(1, 5, 20), config=FAST, **GRID)
    assert head_accuracy(best_head(heads).module, test_x, test_y) <= 0.25 + 0.06


def test_heads_are_deterministic_for_a_seed():
    train_x, train_y = blobs(120, seed=0, spread=2.0)
    val_x, val_y = blobs(60, seed=1, spread=2.0)
    config = HeadTrainingConfig(epochs=5, batch_size=32)

    def fit(seed):
        heads = train_heads(train_x, train_y, val_x, val_y, kind="mlp", seeds=(seed,), hidden=(16,), config=config)
        return [torch.cat([p.flatten() for p in h.module.parameters()]) for h in heads], [h.val_accuracy for h in heads]

    first, again, other = fit(0), fit(0), fit(1)
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0])) and first[1] == again[1]
    assert not torch.equal(first[0][0], other[0][0])


def test_heads_keep_their_best_validation_epoch_and_grid_metadata():
    train_x, train_y = blobs(120, seed=0, spread=2.0)
    val_x, val_y = blobs(60, seed=1, spread=2.0)
    heads = train_heads(train_x, train_y, val_x, val_y, kind="linear", seeds=(0, 1), config=FAST, **GRID)
    assert len(heads) == 2 * 2 * 2
    assert {(h.hyperparameters["seed"], h.hyperparameters["lr"], h.hyperparameters["weight_decay"]) for h in heads} == {
        (s, rate, w) for s in (0, 1) for rate in GRID["lrs"] for w in GRID["weight_decays"]
    }
    for head in heads:  # the module holds the weights of the epoch its validation accuracy was measured at
        assert head_accuracy(head.module, val_x, val_y) == pytest.approx(head.val_accuracy)
    assert best_head(heads).val_accuracy == max(h.val_accuracy for h in heads)


def test_grouped_training_matches_separate_training():
    groups = [HeadGroup(*blobs(80, seed=s, spread=2.0), *blobs(40, seed=10 + s, spread=2.0), (s,)) for s in (0, 1)]
    together = train_head_groups(groups, "linear", config=FAST, **GRID)
    for group, batched in zip(groups, together):
        alone = train_head_groups([group], "linear", config=FAST, **GRID)[0]
        assert [h.val_accuracy for h in batched] == pytest.approx([h.val_accuracy for h in alone])
        assert [h.hyperparameters for h in batched] == [h.hyperparameters for h in alone]


def test_heads_reject_bad_input():
    x, y = blobs(20)
    with pytest.raises(ValueError, match="unknown head kind"):
        train_heads(x, y, x, y, kind="svm")
    with pytest.raises(ValueError, match="num_classes"):
        train_heads(x, y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="equally shaped"):
        train_head_groups([HeadGroup(x, y, x, y), HeadGroup(x[:10], y[:10], x, y)])


def test_whitening_uses_ledoit_wolf_shrinkage_and_fixes_ill_conditioned_features():
    from sklearn.covariance import ledoit_wolf

    from hf_encoderlock.probing.heads import _fit_normalizer, _ledoit_wolf_shrinkage

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 60, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    ours = _ledoit_wolf_shrinkage(x - x.mean(1, keepdim=True))
    assert ours.tolist() == pytest.approx([ledoit_wolf(sample.numpy())[1] for sample in x])
    # Nearly collinear features (a 1e-2 residual on top of exact linear combinations): whitening maps the training
    # data to identity covariance, and a label carried by the tiny residual becomes easy to learn in a few epochs.
    base = torch.randn(500, 3, generator=g)
    residual = 1e-2 * torch.randn(500, 5, generator=g)
    features = torch.cat([base, base @ torch.randn(3, 5, generator=g) + residual], 1)
    whiten = HeadTrainingConfig(whiten_shrinkage=0.0, epochs=15, batch_size=64)
    z = _fit_normalizer(features.unsqueeze(0), whiten)(features.unsqueeze(0))[0]
    assert torch.allclose(z.T @ z / len(z), torch.eye(8), atol=1e-3)
    labels = (residual[:, 0] > 0).long()
    train, val = slice(0, 400), slice(400, 500)
    scores = {}
    for name, config in (("standardize", replace(whiten, normalization="standardize")), ("whiten", whiten)):
        heads = train_heads(
            features[train], labels[train], features[val], labels[val], lrs=(3e-2,), weight_decays=(0.0,), config=config
        )
        scores[name] = heads[0].val_accuracy
    assert scores["whiten"] >= 0.95 and scores["standardize"] <= 0.85


def test_head_accuracy_is_the_float32_of_the_one_accuracy():
    """The lock compares a head's accuracy with the grid's float32 ``val_accuracy``: an equal count of correct
    predictions must give the same number, and that number is :func:`accuracy` rounded to float32."""
    torch.manual_seed(0)
    features, labels = torch.randn(37, 4), torch.randint(0, 3, (37,))
    head = torch.nn.Linear(4, 3)
    predictions = head(features).argmax(-1)
    grid_style = float((predictions == labels).float().mean())
    assert head_accuracy(head, features, labels) == grid_style
    assert head_accuracy(head, features, labels) == float(np.float32(accuracy(predictions, labels)))
