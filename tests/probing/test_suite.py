"""Probe suite: training-row splits and the suite end to end (tiny, offline): report, no selection on test, files."""

import json

import numpy as np
import pytest
import torch

from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.probing import suite as probes_module
from hf_encoderlock.probing.probe_report import ProbeReport
from hf_encoderlock.probing.suite import ProbeConfig, run_probe_suite, split_training_rows

SUITE = ProbeConfig(fractions=(0.5, 1.0), seeds=(0, 1), epochs=8, knn_ks=(1, 3), progress=False, batch_size=32)


@pytest.fixture(scope="module")
def report(encoder, domains):
    return run_probe_suite(encoder, domains, SUITE)


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


def test_best_per_head_ranges_over_poolings(report):
    per_head = report.best_per_head()
    assert {(h, b.domain, b.fraction) for h, b in per_head} == {
        (h, d, f) for h in ("linear", "mlp", "knn") for d in ("alpha", "beta") for f in (0.5, 1.0)
    }
    for head, best in per_head:
        assert {c["head"] for c in best.choices} == {head} and {c["pooling"] for c in best.choices} <= {"cls", "mean"}
    assert "## Per head (best pooling on validation)" in report.to_markdown()


@pytest.mark.parametrize(
    ("process_threads", "head_threads", "expected"), [(1, 2, 1), (2, 2, 2), (4, 2, 2), (2, None, 2)]
)
def test_head_fits_use_at_most_the_process_threads_and_restore_them(
    encoder, domains, monkeypatch, process_threads, head_threads, expected
):
    seen = []
    real = probes_module._probe_cells

    def recording(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(probes_module, "_probe_cells", recording)
    config = ProbeConfig(
        fractions=(1.0,), seeds=(0,), heads=("knn",), poolings=("cls",), head_num_threads=head_threads, progress=False
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(process_threads)
    try:
        run_probe_suite(encoder, {"beta": domains["beta"]}, config, random_twin=False)
        assert seen == [expected] and torch.get_num_threads() == process_threads
    finally:
        torch.set_num_threads(previous)


def test_a_small_test_split_is_named_with_its_standard_error_once(domains, caplog, monkeypatch):
    """24 test images: the error of an accuracy there is up to 0.5 / sqrt(24), about 10 points; the user is told once,
    not at each of the main job's three probe passes."""
    monkeypatch.setattr(probes_module, "_SMALL_SPLITS_NAMED", set())
    with caplog.at_level("WARNING", logger="hf_encoderlock"):
        probes_module.load_domains(domains, SUITE)
        probes_module.load_domains(domains, SUITE)
        probes_module.warn_if_test_split_is_small("big", "test", probes_module.SMALL_TEST_SPLIT)  # at the threshold
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert "domain 'alpha': its 'test' split has 24 images" in messages[0] and "up to 10.2 points" in messages[0]
    assert "domain 'beta': its 'test' split has 21 images" in messages[1]
