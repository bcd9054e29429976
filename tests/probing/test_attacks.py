"""Fine-tuning attacks (full, last-k, LoRA, from scratch) on a tiny ViT and toy domains."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import DatasetDict

from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.probing.attacks import (
    SCRATCH,
    AttackConfig,
    AttackError,
    AttackReport,
    add_lora,
    attention_projections,
    last_k_parameter_names,
    learning_curve_auc,
    prepare_attack,
    run_attack_suite,
)
from tests.helpers import toy_domain


def _config(**overrides) -> AttackConfig:
    values = dict(
        attacks=("full", "last_k", "lora"),
        fractions=(0.25, 1.0),
        seeds=(0,),
        full_lrs=(1e-3,),
        last_k_lrs=(1e-3,),
        lora_lrs=(1e-2,),
        scratch_lrs=(1e-3,),
        epochs=4,
        batch_size=16,
        lora_r=2,
        progress=False,
        num_threads=1,
    )
    values.update(overrides)
    return AttackConfig(**values)


@pytest.fixture(scope="module")
def domains():
    return {
        "red": DatasetDict(train=toy_domain(60, 0, "red"), test=toy_domain(30, 1, "red")),
        "green": DatasetDict(train=toy_domain(60, 2, "green"), test=toy_domain(30, 3, "green")),
    }


@pytest.fixture(scope="module")
def encoder():
    return tiny_vit_encoder(seed=0, image_size=16, patch_size=4)


@pytest.fixture(scope="module")
def suite(encoder, domains):
    before = {n: t.clone() for n, t in encoder.state_dict().items()}
    report = run_attack_suite(encoder, domains, _config(), authorized=["red"], prohibited=["green"])
    return report, before


def test_every_attack_runs_with_sane_accuracies(suite):
    report, _ = suite
    assert set(report.attacks) == {"full", "last_k", "lora", SCRATCH}
    assert len(report.scores) == 4 * 2 * 2
    for score in report.scores:
        assert all(0.0 <= a <= 1.0 for a in score.test_accuracy + score.validation_accuracy)
        assert score.n_train > 0 and score.n_validation > 0 and score.n_test == 30
        assert score.hyperparameters[0]["lr"] in _config().lrs(score.attack)
    # the toy bands are easy: full fine-tuning on all data beats chance (1/3) clearly
    assert report.score("full", "red", 1.0).mean > 0.6
    trainable = {a: report.score(a, "red", 1.0).trainable_parameters for a in report.attacks}
    assert trainable["lora"] < trainable["last_k"] < trainable["full"] == trainable[SCRATCH]
    assert report.domains["red"]["role"] == "authorized" and report.domains["green"]["role"] == "prohibited"


def test_callers_encoder_is_unchanged(suite, encoder):
    _, before = suite
    after = encoder.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(not hasattr(m, "lora_A") for m in encoder.modules())


def test_report_round_trip_and_files(suite, tmp_path):
    report, _ = suite
    paths = report.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert {r["attack"] for r in data["slc_auc"]} == {"full", "last_k", "lora", SCRATCH}
    assert set(data["role_summary"]) == {"authorized", "prohibited"}
    assert "SLC-AUC" in paths["markdown"].read_text() and paths["plot"].stat().st_size > 1000
    again = AttackReport.from_dict(data)
    assert again.slc_auc("full", "red") == pytest.approx(report.slc_auc("full", "red"))
    scratch_row = next(r for r in report.auc_table() if r["attack"] == SCRATCH and r["domain"] == "red")
    assert scratch_row["above_scratch"] == 0.0


def test_deterministic_for_a_seed(encoder, domains):
    config = _config(attacks=("lora",), fractions=(1.0,), epochs=2)
    one = run_attack_suite(encoder, {"red": domains["red"]}, config, random_twin=False)
    two = run_attack_suite(encoder, {"red": domains["red"]}, config, random_twin=False)
    assert [s.test_accuracy for s in one.scores] == [s.test_accuracy for s in two.scores]
    assert [s.validation_accuracy for s in one.scores] == [s.validation_accuracy for s in two.scores]


def test_lora_wraps_attention_projections_and_freezes_base(encoder, domains):
    from peft.tuners.lora import LoraLayer

    from hf_encoderlock.probing.attacks import _Data, train_attack

    model = prepare_attack(encoder, "lora", _config())
    targets = attention_projections(encoder.backbone)
    assert len(targets) == 8 and all(t.rsplit(".", 1)[1] in {"q_proj", "k_proj", "v_proj", "o_proj"} for t in targets)
    modules = dict(model.backbone.named_modules())
    assert all(isinstance(modules[t], LoraLayer) for t in targets)
    assert not any(isinstance(m, LoraLayer) for n, m in modules.items() if "mlp" in n)
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" in n}
    data = domains["red"]["train"]
    pixels = encoder.preprocess(data["image"])
    labels = torch.as_tensor(data["label"])
    train_attack(
        model,
        _Data(pixels[:40], labels[:40]),
        _Data(pixels[40:], labels[40:]),
        3,
        1e-2,
        _config(patience=None, epochs=2),
        seed=0,
    )
    after = dict(model.backbone.named_parameters())
    assert all(torch.equal(base[n], after[n]) for n in base)
    assert any(not torch.equal(lora_before[n], after[n]) for n in lora_before)


def test_last_k_and_bad_settings(encoder):
    names = last_k_parameter_names(encoder.backbone, 1)
    assert all(n.startswith(("layers.1.", "layernorm.", "pooler.")) for n in names)
    assert any(n.startswith("layernorm.") for n in names) and not any(n.startswith("layers.0.") for n in names)
    assert len(last_k_parameter_names(encoder.backbone, 2)) > len(names)
    with pytest.raises(AttackError, match="only 2 blocks"):
        last_k_parameter_names(encoder.backbone, 3)
    with pytest.raises(AttackError, match="subset"):
        AttackConfig(attacks=("probe",))
    with pytest.raises(AttackError, match="fractions"):
        AttackConfig(fractions=(0.0,))
    with pytest.raises(AttackError, match="matched no module|not found|Target modules"):
        add_lora(prepare_attack(encoder, "full", _config()).backbone, _config(lora_targets=("nothing_here",)))


def test_learning_curve_auc_by_hand():
    # log axis: 0.01 -> 0, 0.1 -> 0.5, 1 -> 1
    assert learning_curve_auc([0.01, 0.1, 1.0], [0.2, 0.6, 1.0]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.8)
    assert learning_curve_auc([1.0, 0.01, 0.1], [1.0, 0.2, 0.6]) == pytest.approx(0.6)  # order does not matter
    assert learning_curve_auc([0.01, 1.0], [0.3, 0.3]) == pytest.approx(0.3)
    # unequal spacing: 0.01 -> 0, 0.1 -> 1/3, 1 -> 2/3, 10 (clipped? no: fractions <= 1 in practice) -> 1
    assert learning_curve_auc([0.001, 0.01, 1.0], [0.0, 0.3, 0.9]) == pytest.approx(1 / 3 * 0.15 + 2 / 3 * 0.6)
    assert learning_curve_auc([0.5], [0.7]) == pytest.approx(0.7)
    assert math.isnan(learning_curve_auc([0.1, 1.0], [float("nan"), 0.5]))
    with pytest.raises(ValueError):
        learning_curve_auc([], [])
