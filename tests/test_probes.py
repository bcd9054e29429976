"""Probe suite: heads, feature cache, splits, the metric module, reports and the suite end to end (tiny, offline)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.probing import suite as probes_module
from hf_encoderlock.probing.features import FeatureError, extract_features
from hf_encoderlock.probing.heads import (
    HeadGroup,
    HeadTrainingConfig,
    accuracy,
    best_head,
    train_head_groups,
    train_heads,
)
from hf_encoderlock.probing.probe_report import (
    ProbeReport,
    ProbeScore,
    load_encoderlock_metric,
    lock_measures,
    make_compute_metrics,
)
from hf_encoderlock.probing.suite import ProbeConfig, run_probe_suite, split_training_rows

FAST = HeadTrainingConfig(epochs=30, batch_size=64, patience=None)
GRID = {"lrs": (1e-2, 3e-2), "weight_decays": (0.0, 1e-3)}


# ------------------------------------------------------------------------------------------------- fixtures
def blobs(n, num_classes=4, dim=16, seed=0, spread=0.3, shuffle_labels=False):
    """Gaussian blobs around well-separated random centres (linearly separable at this spread)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(n) % num_classes
    x = centres[labels] + spread * torch.randn(n, dim, generator=g)
    if shuffle_labels:
        labels = torch.randint(0, num_classes, (n,), generator=g)
    return x * 50 + 7, labels  # far from standardised: the heads must standardise themselves


def image_domain(n_train, n_test, num_classes=3, seed=0):
    """A tiny image domain: class c has a bright channel c on noise (easy for any encoder)."""
    rng = np.random.default_rng(seed)

    def split(n):
        images, labels = [], []
        for i in range(n):
            label = i % num_classes
            pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            pixels[:, :, label % 3] += 150
            images.append(Image.fromarray(pixels))
            labels.append(label)
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=[f"c{k}" for k in range(num_classes)])})
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    return DatasetDict(train=split(n_train), test=split(n_test))


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return tiny_vit_encoder(seed=3)  # the twin uses seed 0: it must differ from the encoder


@pytest.fixture(scope="module")
def domains():
    return {"alpha": image_domain(60, 24, seed=0), "beta": image_domain(45, 21, seed=1)}


SUITE = ProbeConfig(fractions=(0.5, 1.0), seeds=(0, 1), epochs=8, knn_ks=(1, 3), progress=False, batch_size=32)


@pytest.fixture(scope="module")
def report(encoder, domains):
    return run_probe_suite(encoder, domains, SUITE)


# ------------------------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("kind", ["linear", "mlp", "knn"])
def test_heads_reach_100_percent_on_separable_data(kind):
    train_x, train_y = blobs(240, seed=0)
    val_x, val_y = blobs(80, seed=1)
    test_x, test_y = blobs(200, seed=2)
    heads = train_heads(train_x, train_y, val_x, val_y, kind=kind, hidden=(32,), ks=(1, 5), config=FAST, **GRID)
    chosen = best_head(heads)
    assert accuracy(chosen.module, test_x, test_y) >= 0.98


@pytest.mark.parametrize("kind", ["linear", "mlp", "knn"])
def test_heads_stay_at_chance_on_shuffled_labels(kind):
    # 4 balanced classes: chance 0.25. On 1,000 independent test labels the accuracy of any fixed head has std
    # sqrt(0.25 * 0.75 / 1000) = 0.0137; 0.25 + 0.06 is more than 4 std above chance.
    train_x, train_y = blobs(400, seed=0, shuffle_labels=True)
    val_x, val_y = blobs(200, seed=1, shuffle_labels=True)
    test_x, test_y = blobs(1000, seed=2, shuffle_labels=True)
    heads = train_heads(train_x, train_y, val_x, val_y, kind=kind, hidden=(32,), ks=(1, 5, 20), config=FAST, **GRID)
    assert accuracy(best_head(heads).module, test_x, test_y) <= 0.25 + 0.06


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
        assert accuracy(head.module, val_x, val_y) == pytest.approx(head.val_accuracy)
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


# ---------------------------------------------------------------------------------------- features and splits
def test_features_are_cached_by_encoder_weights_and_dataset(encoder, domains, tmp_path):
    dataset = domains["alpha"]["test"]
    first = extract_features(encoder, dataset, None, batch_size=16, cache_dir=tmp_path, progress=False)
    assert set(first.features) == {"cls", "mean"} and first.features["cls"].shape == (24, 32)
    assert torch.equal(first.labels, torch.tensor(dataset["label"]))
    calls = []
    original = encoder.pooled_features
    encoder.pooled_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        again = extract_features(encoder, dataset, None, batch_size=16, cache_dir=tmp_path, progress=False)
        assert calls == [] and torch.equal(again.features["mean"], first.features["mean"])
        twin = encoder.random_init_twin(0)
        other = extract_features(twin, dataset, None, batch_size=16, cache_dir=tmp_path, progress=False)
        assert other.cache_key != first.cache_key and not torch.equal(other.features["cls"], first.features["cls"])
        subset = extract_features(encoder, dataset.select(range(10)), ["cls"], cache_dir=tmp_path, progress=False)
        assert subset.cache_key != first.cache_key and len(calls) == 1 and len(subset) == 10
    finally:
        del encoder.pooled_features
    with pytest.raises(FeatureError, match="not offered"):
        extract_features(encoder, dataset, ["spatial_mean"], progress=False)


def test_training_rows_are_stratified_nested_and_disjoint_from_validation():
    labels = np.repeat(np.arange(5), [40, 30, 20, 20, 10])
    config = ProbeConfig(fractions=(0.05, 0.5, 1.0), seeds=(0, 1, 2), validation_fraction=0.2)
    splits = split_training_rows(labels, config.split_plan())
    for split in splits:
        assert len(split.validation) == 24 and np.bincount(labels[split.validation]).tolist() == [8, 6, 4, 4, 2]
        full = split.train[1.0]
        assert len(full) == 96 and not set(full) & set(split.validation)
        assert set(split.train[0.05]) <= set(split.train[0.5]) <= set(full)
        assert np.bincount(labels[split.train[0.05]], minlength=5).min() >= 1  # every class present
        assert len(split.train[0.5]) == 48
    assert [len(s.train[0.05]) for s in splits] == [len(splits[0].train[0.05])] * 3  # sizes independent of seed
    assert not np.array_equal(splits[0].train[0.5], splits[1].train[0.5])


# -------------------------------------------------------------------------------------------------- metric
def test_metric_module_loads_offline_and_computes_accuracy():
    metric = load_encoderlock_metric()
    assert metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2]) == {"accuracy": 0.75}
    compute_metrics = make_compute_metrics(metric)
    logits = np.array([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0]])
    assert compute_metrics((logits, np.array([0, 1, 1]))) == {"accuracy": pytest.approx(2 / 3)}


def test_metric_module_computes_lock_measures():
    lock = load_encoderlock_metric("lock")
    # prohibited: victim 90%, locked 20%, twin 10%: (90 - 20) / (90 - 10) = 0.875 of the advantage removed
    # authorized: victim 80%, locked 75%, twin 30%: (75 - 30) / (80 - 30) = 0.9 of the advantage kept
    result = lock.compute(locked=[0.2, 0.75], victim=[0.9, 0.8], random_twin=[0.1, 0.3])
    assert result["advantage_removed_per_row"] == pytest.approx([0.875, 0.1])
    assert result["advantage_kept_per_row"] == pytest.approx([0.125, 0.9])
    only = lock.compute(locked=[0.2, 0.5], victim=[0.9, 0.4], random_twin=[0.1, 0.4], role="prohibited")
    assert set(only) == {"advantage_removed", "advantage_removed_per_row"}
    assert math.isnan(only["advantage_removed_per_row"][1])  # no advantage to remove: undefined, not counted
    assert only["advantage_removed"] == pytest.approx(0.875)


def _score(role, domain, accuracy_by_seed, head="linear", pooling="cls", fraction=1.0, val=None):
    return ProbeScore(
        role,
        domain,
        head,
        pooling,
        fraction,
        100,
        10,
        50,
        [0, 1],
        list(accuracy_by_seed),
        list(val or accuracy_by_seed),
        [{"lr": 0.01}, {"lr": 0.01}],
    )


def _report(name, scores):
    domains = {"auth": {"num_classes": 10, "chance": 0.1}, "proh": {"num_classes": 10, "chance": 0.1}}
    return ProbeReport(name, "twin", domains, {"seeds": [0, 1], "heads": ["linear"], "poolings": ["cls"]}, scores)


def test_attacker_best_is_chosen_on_validation_and_lock_measures_follow():
    victim = _report(
        "victim",
        [
            _score("encoder", "auth", [0.8, 0.8]),
            _score("encoder", "proh", [0.9, 0.9]),
            # a head that is better on test but worse on validation must not be chosen
            _score("encoder", "proh", [0.99, 0.99], head="mlp", val=[0.5, 0.5]),
            _score("random_twin", "auth", [0.3, 0.3]),
            _score("random_twin", "proh", [0.1, 0.1]),
        ],
    )
    locked = _report("locked", [_score("encoder", "auth", [0.74, 0.76]), _score("encoder", "proh", [0.2, 0.2])])
    best = victim.best("proh", 1.0)
    assert best.mean == pytest.approx(0.9) and best.choices[0]["head"] == "linear"
    measures = lock_measures(victim, locked, authorized=["auth"], prohibited=["proh"])
    rows = {r["domain"]: r for r in measures["rows"]}
    assert rows["proh"]["advantage_removed"] == pytest.approx(0.875)
    assert rows["auth"]["advantage_kept"] == pytest.approx(0.9)
    assert measures["summary"]["100%"] == pytest.approx({"mean_advantage_removed": 0.875, "mean_advantage_kept": 0.9})
    with pytest.raises(ValueError, match="random-twin"):
        lock_measures(locked, locked, prohibited=["proh"])


# ---------------------------------------------------------------------------------------------------- suite
def test_probe_suite_report_structure(report, encoder):
    assert report.encoder == encoder.name and report.random_twin.endswith("(random init)")
    assert report.roles == ("encoder", "random_twin")
    assert report.fractions == (0.5, 1.0) and report.domain_names == ("alpha", "beta")
    assert report.config["poolings"] == ["cls", "mean"]
    assert len(report.scores) == 2 * 2 * 2 * 2 * 3  # roles x domains x poolings x fractions x heads
    for score in report.scores:
        assert len(score.test_accuracy) == len(score.validation_accuracy) == len(score.hyperparameters) == 2
        assert score.mean == pytest.approx(np.mean(score.test_accuracy))
        assert score.std == pytest.approx(np.std(score.test_accuracy, ddof=1))
        assert score.n_test == (24 if score.domain == "alpha" else 21)
    alpha = report.select("encoder", "alpha", 0.5)
    assert {s.n_train for s in alpha} == {27}  # half of the 54 rows left after a 10% validation split
    assert report.domains["alpha"] == {
        "num_classes": 3,
        "chance": pytest.approx(1 / 3),
        "n_train_split": 60,
        "n_test": 24,
    }
    for role in report.roles:
        for best in report.best_scores(role):
            assert 0.0 <= best.mean <= 1.0 and len(best.choices) == 2
    # the easy domains are learnt from the encoder's features
    assert report.best("alpha", 1.0).mean >= 0.9


def test_probe_suite_never_selects_on_test(encoder, domains, monkeypatch):
    test_rows = set()
    seen = []
    real = probes_module.train_head_groups

    def spy(groups, kind, **kwargs):
        seen.extend(groups)
        return real(groups, kind, **kwargs)

    real_extract = probes_module.extract_features

    def recording_extract(model, dataset, *args, **kwargs):
        result = real_extract(model, dataset, *args, **kwargs)
        if dataset is domains["alpha"]["test"]:
            test_rows.update(tuple(r.tolist()) for r in result.features["cls"])
        return result

    monkeypatch.setattr(probes_module, "train_head_groups", spy)
    monkeypatch.setattr(probes_module, "extract_features", recording_extract)
    config = ProbeConfig(fractions=(1.0,), seeds=(0,), heads=("linear",), poolings=("cls",), epochs=2, progress=False)
    run_probe_suite(encoder, {"alpha": domains["alpha"]}, config, random_twin=False)
    assert test_rows and seen
    for group in seen:
        fitted_rows = {tuple(r.tolist()) for r in torch.cat([group.train_x, group.val_x])}
        assert not fitted_rows & test_rows
        assert not {tuple(r.tolist()) for r in group.train_x} & {tuple(r.tolist()) for r in group.val_x}


def test_probe_suite_writes_json_markdown_and_png(report, tmp_path):
    paths = report.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["encoder"] == report.encoder and len(data["scores"]) == len(report.scores)
    assert {"encoder", "random_twin"} == set(data["best"])
    markdown = paths["markdown"].read_text()
    assert "## Attacker's best" in markdown and "| alpha |" in markdown and "Random twin" in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = ProbeReport.from_json(paths["json"])
    assert again.best("beta", 1.0, "random_twin").mean == pytest.approx(report.best("beta", 1.0, "random_twin").mean)


def test_probe_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fractions"):
        ProbeConfig(fractions=(0.0, 1.0))
    with pytest.raises(ValueError, match="heads"):
        ProbeConfig(heads=("svm",))
    with pytest.raises(ValueError, match="mlp_hidden"):
        ProbeConfig(mlp_hidden=(8, 8, 8))


def test_probe_suite_warns_when_the_twin_equals_the_encoder(domains):
    config = ProbeConfig(fractions=(1.0,), seeds=(0,), heads=("knn",), poolings=("cls",), progress=False)
    with pytest.warns(UserWarning, match="same weights"):
        run_probe_suite(tiny_vit_encoder(seed=0), {"beta": domains["beta"]}, config)  # twin seed 0 = this encoder


def test_probe_features_are_deterministic(encoder, domains):
    config = ProbeConfig(fractions=(0.5,), seeds=(0, 1), heads=("linear", "mlp"), epochs=3, progress=False)
    first, again = (run_probe_suite(encoder, {"alpha": domains["alpha"]}, config, random_twin=False) for _ in range(2))
    assert [s.test_accuracy for s in first.scores] == [s.test_accuracy for s in again.scores]
    assert [s.hyperparameters for s in first.scores] == [s.hyperparameters for s in again.scores]


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


def test_best_per_head_ranges_over_poolings(report):
    per_head = report.best_per_head()
    assert {(h, b.domain, b.fraction) for h, b in per_head} == {
        (h, d, f) for h in ("linear", "mlp", "knn") for d in ("alpha", "beta") for f in (0.5, 1.0)
    }
    for head, best in per_head:
        assert {c["head"] for c in best.choices} == {head} and {c["pooling"] for c in best.choices} <= {"cls", "mean"}
    assert "## Per head (best pooling on validation)" in report.to_markdown()
