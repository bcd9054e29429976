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
    block_parameter_names,
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
        assert all(1 <= h["epochs"] <= _config().epochs for h in score.hyperparameters)  # a trained head, always
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


# ------------------------------------------------------------------------------------------- a patient attacker
def test_defaults_are_a_patient_attacker():
    config = AttackConfig()
    assert config.patience is None  # no early stop: every epoch trains
    assert config.epochs >= 10
    assert config.full_lrs == (1e-4, 1e-3) and config.scratch_lrs == (1e-4, 1e-3)
    assert config.head_lr is None  # one lr for the encoder and the head
    assert config.weight_decay == pytest.approx(0.01)  # AdamW's own default
    assert config.min_steps_per_epoch >= 10 and config.batch_size <= 32
    with pytest.raises(AttackError, match="patience"):
        AttackConfig(patience=0)


def _scripted_validation(monkeypatch, accuracies):
    """Replace the validation scorer by a script; records the head's weights at each call."""
    from hf_encoderlock.probing import attacks

    heads, calls = [], iter(accuracies)

    def fake(classifier, data, batch_size):
        heads.append(classifier.head.weight.detach().clone())
        return next(calls)

    monkeypatch.setattr(attacks, "_classifier_accuracy", fake)
    return heads


def _tiny_run(encoder, domains, config, lr=1e-3):
    from hf_encoderlock.probing.attacks import _Data, train_attack

    data = domains["red"]["train"]
    pixels, labels = encoder.preprocess(data["image"]), torch.as_tensor(data["label"])
    model = prepare_attack(encoder, "full", config)
    train, validation = _Data(pixels[:8], labels[:8]), _Data(pixels[40:], labels[40:])
    return train_attack(model, train, validation, 3, lr, config, seed=0)


def test_every_epoch_trains_and_the_best_validation_epoch_is_kept(monkeypatch, encoder, domains):
    # patience=3 would have stopped after epoch 4; the patient attacker reaches its best epoch, 5
    heads = _scripted_validation(monkeypatch, [0.5, 0.2, 0.2, 0.2, 0.9, 0.3])
    classifier, accuracy, epoch = _tiny_run(encoder, domains, _config(epochs=6, batch_size=4, min_steps_per_epoch=1))
    assert len(heads) == 6  # one score per trained epoch, none for the untrained head
    assert (accuracy, epoch) == (0.9, 5)
    assert torch.equal(classifier.head.weight, heads[4]) and not torch.equal(heads[4], heads[5])


def test_the_untrained_head_is_never_kept(monkeypatch, encoder, domains):
    # even when no trained epoch scores anything on validation, epoch 1 is returned (not epoch 0)
    heads = _scripted_validation(monkeypatch, [0.0, 0.0, 0.0])
    _, accuracy, epoch = _tiny_run(encoder, domains, _config(epochs=3, batch_size=4, min_steps_per_epoch=1))
    assert (accuracy, epoch, len(heads)) == (0.0, 1, 3)


def test_patience_still_stops_when_asked(monkeypatch, encoder, domains):
    heads = _scripted_validation(monkeypatch, [0.5, 0.4, 0.4, 0.9])
    _, accuracy, epoch = _tiny_run(encoder, domains, _config(epochs=4, batch_size=4, patience=2, min_steps_per_epoch=1))
    assert (accuracy, epoch, len(heads)) == (0.5, 1, 3)


def test_one_lr_for_head_and_encoder_and_a_floor_of_steps(monkeypatch, encoder, domains):
    groups, steps = [], []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            groups.extend({k: g[k] for k in ("lr", "weight_decay")} for g in self.param_groups)

        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    _tiny_run(encoder, domains, _config(epochs=2, batch_size=32), lr=3e-4)  # 8 images: 1 batch, 10 steps/epoch
    assert groups == [{"lr": 3e-4, "weight_decay": 0.0}, {"lr": 3e-4, "weight_decay": 0.01}]
    assert len(steps) == 2 * AttackConfig().min_steps_per_epoch
    groups.clear()
    _tiny_run(encoder, domains, _config(epochs=1, head_lr=1e-2), lr=3e-4)
    assert [g["lr"] for g in groups] == [1e-2, 3e-4]


def test_every_lr_of_the_grid_runs_and_validation_alone_chooses(monkeypatch, encoder, domains):
    from hf_encoderlock.probing import attacks

    seen = []

    def fake_train(model, train, validation, num_classes, lr, config, seed):
        seen.append(lr)
        classifier = attacks._Classifier(model, num_classes, torch.Generator().manual_seed(0))
        classifier.lr = lr
        return classifier, {1e-4: 0.3, 1e-3: 0.7, 1e-2: 0.5}[lr], 4

    def test_score(classifier, data, batch_size):  # the lr that loses on validation would win on test
        return {1e-4: 0.99, 1e-3: 0.1, 1e-2: 0.95}[classifier.lr]

    monkeypatch.setattr(attacks, "train_attack", fake_train)
    monkeypatch.setattr(attacks, "_classifier_accuracy", test_score)
    config = _config(attacks=("full",), fractions=(1.0,), seeds=(0, 1), full_lrs=(1e-4, 1e-3, 1e-2))
    report = run_attack_suite(encoder, {"red": domains["red"]}, config, random_twin=False)
    assert seen == [1e-4, 1e-3, 1e-2] * 2
    score = report.score("full", "red", 1.0)
    assert score.hyperparameters == [{"lr": 1e-3, "epochs": 4}] * 2
    assert score.validation_accuracy == [0.7, 0.7] and score.test_accuracy == [0.1, 0.1]


def test_reinit_redraws_exactly_the_lockable_blocks_and_trains_everything(encoder):
    names = block_parameter_names(encoder.backbone, (-1, 0))
    assert any(n.startswith("embeddings.") for n in names) and any(n.startswith("layers.0.") for n in names)
    assert not any(n.startswith(("layers.1.", "layernorm.", "pooler.")) for n in names)
    # the fixture's encoder was built with seed 0, like a twin of seed 0: redraw with another seed
    model = prepare_attack(encoder, "reinit", _config(reinit_blocks=(-1, 0), random_twin_seed=5))
    original = {n: p.detach().clone() for n, p in encoder.backbone.named_parameters()}
    twin = dict(encoder.random_init_twin(5).backbone.named_parameters())
    for name, param in model.backbone.named_parameters():
        assert param.requires_grad, name
        assert torch.equal(param, twin[name] if name in names else original[name]), name
    kernel = "embeddings.patch_embeddings.projection.weight"
    assert not torch.equal(twin[kernel], original[kernel])
    assert torch.equal(encoder.backbone.get_parameter(kernel), original[kernel])  # the caller's encoder is untouched
    with pytest.raises(AttackError, match="only 2 blocks"):
        block_parameter_names(encoder.backbone, (5,))
