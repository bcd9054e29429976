"""The adaptive attacker: strengths chosen on validation, the worst case is the maximum over attacks, and a lock
made of a few huge weights is reported as broken."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hf_encoderlock.probing import adaptive
from hf_encoderlock.probing.adaptive import (
    COMBINED,
    FRESH_PROBE,
    SANITIZE,
    AdaptiveConfig,
    AdaptiveError,
    AdaptiveReport,
    AttackOutcome,
    run_adaptive_suite,
)
from hf_encoderlock.probing.lock_report import prohibited_verdict
from hf_encoderlock.probing.sanitize import SANITIZERS, sanitize_module
from hf_encoderlock.probing.suite import ProbeConfig, run_probe_suite

from .conftest import image_domain

FAST = dict(seeds=(0,), heads=("linear", "knn"), progress=False)


@pytest.fixture(scope="module")
def prohibited():
    return {"p": image_domain(90, 45, seed=0)}


@pytest.fixture(scope="module")
def outlier_lock(encoder):
    """The encoder "locked" by huge weights at one position of the patch kernel: every patch token is swamped by
    one pixel's value, so fresh probes fail; nothing else changed."""
    locked = copy.deepcopy(encoder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        kernel = locked.backbone.embeddings.patch_embeddings.projection.weight
        kernel[:, :, 0, 0] = 1e7 * torch.sign(torch.randn(kernel.shape[0], 1, generator=generator))
    return locked


@pytest.fixture(scope="module")
def baselines(encoder, prohibited):
    report = run_probe_suite(encoder, prohibited, ProbeConfig(fractions=(1.0,), **FAST), random_twin=True)
    return {"p": {"victim": report.best("p", 1.0).mean, "random_twin": report.best("p", 1.0, "random_twin").mean}}


def outcome(family, attack, strength, validation, test):
    return AttackOutcome(family, attack, strength, "p", [validation], [test])


def test_strength_is_chosen_on_validation_and_the_worst_case_is_the_maximum_over_attacks():
    report = AdaptiveReport(
        "enc",
        {"p": {}},
        {"p": {"victim": 0.9, "random_twin": 0.3}},
        {},
        [
            outcome(FRESH_PROBE, "none", None, 0.35, 0.33),
            outcome(SANITIZE, "reset_outliers", 4.0, 0.50, 0.80),  # best on test, not on validation
            outcome(SANITIZE, "reset_outliers", 6.0, 0.70, 0.60),
            outcome("transform", "invert", 1.0, 0.40, 0.45),
        ],
    )
    chosen = {o.attack: o.strength for o in report.chosen("p")}
    assert chosen == {"none": None, "reset_outliers": 6.0, "invert": 1.0}
    worst = report.worst_case("p")
    assert (worst.attack, worst.strength, worst.test) == ("reset_outliers", 6.0, 0.60)
    assert report.removed(worst.test, "p") == pytest.approx((0.9 - 0.6) / (0.9 - 0.3))
    summary = report.summary()[0]
    assert summary["fresh_probe_removed"] == pytest.approx((0.9 - 0.33) / 0.6)
    assert summary["worst_removed"] == pytest.approx(0.5)
    again = AdaptiveReport.from_dict(report.to_dict())
    assert again.worst_case("p").test == worst.test
    assert "reset_outliers (6)" in report.to_markdown()


def test_without_a_victim_the_removal_is_not_invented():
    report = AdaptiveReport(
        "enc", {"p": {}}, {"p": {"random_twin": 0.3}}, {}, [outcome(FRESH_PROBE, "none", None, 0.4, 0.4)]
    )
    assert math.isnan(report.summary()[0]["worst_removed"])


def test_a_lock_of_a_few_huge_weights_is_broken_by_the_sanitiser(encoder, outlier_lock, prohibited, baselines):
    config = AdaptiveConfig(sanitizers=("reset_outliers", "gaussian_noise"), transforms=("greyscale",), **FAST)
    report = run_adaptive_suite(outlier_lock, prohibited, config, baselines=baselines)
    summary, victim = report.summary()[0], baselines["p"]["victim"]
    # fresh probes alone would call this a lock ...
    assert summary["fresh_probe"] <= victim - 0.3
    # ... the attacker who looks at the weights gets the victim's accuracy back, and the report says so
    assert summary["worst_family"] in (SANITIZE, COMBINED)
    assert summary["worst_accuracy"] >= victim - 0.05
    assert report.best_in_family("p", SANITIZE).attack == "reset_outliers"
    assert sum(report.outliers.values()) >= 96
    row = {**baselines["p"], "locked": summary["fresh_probe"], "advantage_removed": summary["fresh_probe_removed"]}
    row.update(adaptive_worst=summary["worst_accuracy"], adaptive_removed=summary["worst_removed"])
    assert prohibited_verdict({**row, "adaptive_attack": summary["worst_attack"]}).startswith("lock does NOT hold")
    assert "reset_outliers" in report.to_markdown()


def test_on_a_validation_tie_the_gentlest_strength_is_kept():
    report = AdaptiveReport(
        "enc",
        {"p": {}},
        {},
        {},
        [outcome(SANITIZE, "reset_outliers", z, 1.0, test) for z, test in ((6.0, 0.97), (4.0, 0.97), (2.5, 0.86))],
    )
    assert report.chosen("p")[0].strength == 6.0
    assert SANITIZERS["reset_outliers"].strengths[0] == max(SANITIZERS["reset_outliers"].strengths)


def test_transforms_apply_to_train_and_test_alike(encoder, prohibited, baselines, tmp_path, monkeypatch):
    seen = []
    real = adaptive.run_probe_suite

    def spy(model, data, *args, **kwargs):
        seen.append((model, data))
        return real(model, data, *args, **kwargs)

    monkeypatch.setattr(adaptive, "run_probe_suite", spy)
    config = AdaptiveConfig(sanitizers=(), transforms=("invert",), learned_transforms=(), combine=False, **FAST)
    report = run_adaptive_suite(encoder, prohibited, config, baselines=baselines, output_dir=tmp_path)
    model, data = seen[-1]
    # the probe suite extracts every split through the model's preprocessing: train and test are inverted alike
    assert data["p"] is prohibited["p"]
    for split in ("train", "test"):
        image = prohibited["p"][split][0]["image"]
        inverted = Image.fromarray((255 - np.asarray(image)).astype(np.uint8))
        assert torch.equal(model.preprocess([image]), encoder.preprocess([inverted]))
    invert = [o for o in report.outcomes if o.attack == "invert"][0]
    assert invert.test > 0.8  # inverted images are as informative when the probe trains and tests on them alike
    assert (tmp_path / "adaptive_report.json").is_file() and (tmp_path / "adaptive_report.md").is_file()


def test_missing_columns_are_named_before_any_attack(encoder, prohibited):
    renamed = {"p": prohibited["p"].rename_column("image", "img")}
    with pytest.raises(AdaptiveError, match=r"domain 'p' split 'train' has no column\(s\) \['image'\]"):
        run_adaptive_suite(encoder, renamed, AdaptiveConfig(**FAST))
    config = AdaptiveConfig(image_column="img", **FAST)
    with pytest.raises(AdaptiveError, match="the authorized sample has no 'img' column"):
        run_adaptive_suite(encoder, renamed, config, authorized=prohibited["p"]["train"])


def test_bad_settings_fail_before_any_work():
    with pytest.raises(AdaptiveError, match="sanitizers must be a subset"):
        AdaptiveConfig(sanitizers=("shave",))
    with pytest.raises(AdaptiveError, match="suite must be one of"):
        AdaptiveConfig(suite="everything")


def test_the_pixel_cache_preprocesses_each_image_once_and_changes_no_feature(encoder, prohibited):
    calls = []
    cache = adaptive.PixelCache(encoder)
    real = encoder.preprocess

    def counting(images):
        calls.append(len(images))
        return real(images)

    cache.encoder = type("Counting", (), {"preprocess": staticmethod(counting)})()
    images = prohibited["p"]["test"]["image"][:5]
    first, again = cache.preprocess(images), cache.preprocess(list(images))
    assert calls == [5] and torch.equal(first, again)
    sanitised = sanitize_module(encoder, "gaussian_noise", 0.2)
    with torch.no_grad():
        assert torch.equal(cache.view(sanitised).features(cache.preprocess(images)), sanitised.features(real(images)))


def test_telltale_tensors_are_those_over_twice_the_victims_outliers_and_the_report_says_so():
    report = AdaptiveReport("enc", {"p": {}}, {}, {}, outliers={"a.weight": 5, "b.weight": 4, "c.weight": 1})
    assert report.telltale_tensors() == ["a.weight", "b.weight", "c.weight"]  # victim unknown: any outlier counts
    assert "unknown" in report.outlier_line()
    report.victim_outliers = {"a.weight": 2, "b.weight": 2, "d.weight": 7}
    assert report.telltale_tensors() == ["a.weight", "c.weight"]  # 5 > 2 x 2; 4 is not > 4; 1 > 2 x 0
    assert "2 tensor(s) hold more than twice the victim's" in report.outlier_line()
    again = AdaptiveReport.from_dict(json.loads(report.to_json()))
    assert again.victim_outliers == report.victim_outliers and again.telltale_tensors() == ["a.weight", "c.weight"]
    report.outliers = {"a.weight": 4}
    assert "no tensor holds more than twice" in report.outlier_line()


def test_tensors_with_piled_up_entries_are_telltale_too_and_survive_the_round_trip():
    report = AdaptiveReport("enc", {"p": {}}, {}, {}, outliers={}, victim_outliers={"a.weight": 0, "b.weight": 0})
    assert report.telltale_tensors() == [] and "piled-up" not in report.outlier_line()
    report.piled_up, report.victim_piled_up = {"b.weight": 772, "c.weight": 3}, {"b.weight": 0, "c.weight": 2}
    assert report.telltale_tensors() == ["b.weight"]  # 772 > 2 x 0; 3 is not > 2 x 2
    line = report.outlier_line()
    assert "entries on a piled-up value (a bound's clamp): 775 (victim: 2)" in line and "1 tensor(s)" in line
    report.outliers = {"b.weight": 9}  # over both rules: named once
    assert report.telltale_tensors() == ["b.weight"]
    again = AdaptiveReport.from_dict(json.loads(report.to_json()))
    assert (again.piled_up, again.victim_piled_up) == (report.piled_up, report.victim_piled_up)
    assert again.telltale_tensors() == ["b.weight"]
