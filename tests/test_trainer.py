"""EncoderLockTrainer on a tiny ViT: exact masked updates, logging, saving, config round trips."""

import json

import pytest
import torch
import yaml
from transformers import AutoImageProcessor, AutoModel, HfArgumentParser, TrainerCallback

from hf_encoderlock.data.lock_tensors import LockDataError
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.objectives import LockHeads, PaperObjective
from hf_encoderlock.lock.selection import load_mask
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, MASK_FILE, EncoderLockTrainer, NonFiniteLossError

from .helpers import toy_domain


def _config(tmp_path, **overrides) -> EncoderLockConfig:
    values = dict(
        output_dir=str(tmp_path / "run"),
        num_rounds=2,
        update_steps_per_round=3,
        weights_per_round=15,
        layers_per_round=2,
        per_device_train_batch_size=12,
        score_batches=2,
        challenge_every=1,
        adversary_epochs=3,
        adversary_seeds=1,
        adversary_kinds=["linear"],
        adversary_learning_rates=[1e-2],
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        seed=3,
        disable_tqdm=True,
    )
    values.update(overrides)
    return EncoderLockConfig(**values)


@pytest.fixture(scope="module")
def domains():
    return toy_domain(48, 0, "red"), toy_domain(48, 1, "green"), toy_domain(15, 2, "red"), toy_domain(15, 3, "green")


def _trainer(tmp_path, domains, **overrides):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    authorized, prohibited, eval_a, eval_p = domains
    args = _config(tmp_path, **overrides)
    trainer = EncoderLockTrainer(
        encoder, args, authorized, prohibited, "red", "green", eval_dataset={"authorized": eval_a, "prohibited": eval_p}
    )
    return encoder, trainer


@pytest.mark.parametrize(
    "overrides",
    [
        dict(weight_decay=0.1, max_grad_norm=0.5, gradient_accumulation_steps=2),
        dict(weight_decay=0.05, bf16=True),
    ],
    ids=["adamw-clip-accumulate", "bf16"],
)
def test_only_selected_entries_change(tmp_path, domains, overrides):
    encoder, trainer = _trainer(tmp_path, domains, best_model_criterion="last", **overrides)
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    trainer.train()
    mask = trainer.mask
    mask_size = sum(int(m.sum()) for m in mask.values())
    assert mask_size == 2 * 15
    changed = 0
    for name, param in encoder.named_parameters():
        diff = param.detach() != before[name]
        if name in mask:
            assert not diff[~mask[name]].any(), f"unselected entries of {name} moved"
            changed += int(diff[mask[name]].sum())
        else:
            assert torch.equal(param.detach(), before[name]), f"{name} is outside the mask but changed"
    assert changed == mask_size


def test_logs_rounds_and_saves_a_loadable_encoder(tmp_path, domains):
    encoder, trainer = _trainer(tmp_path, domains)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "lock/mask_size" in entry]
    assert [int(float(e["lock/mask_size"])) for e in logged] == [15, 30]
    assert any("lock/challenge_prohibited_val_accuracy" in e for e in trainer.state.log_history)
    assert any("lock/loss_prohibited" in e for e in trainer.state.log_history)
    metrics = trainer.evaluate()
    assert {"eval_authorized_head_accuracy", "eval_prohibited_head_accuracy"} <= set(metrics)

    out = tmp_path / "locked"
    trainer.save_model(str(out))
    summary = json.loads((out / LOCK_CONFIG_FILE).read_text())
    assert summary["authorized"] == ["red"] and summary["prohibited"] == ["green"]
    assert summary["variant"] == "supervised" and summary["seed"] == 3
    assert summary["mask"]["count"] == sum(summary["mask"]["per_layer"].values()) > 0
    assert {"transformers", "torch", "hf_encoderlock"} <= set(summary["versions"])
    assert (out / MASK_FILE).is_file()
    reloaded = AutoModel.from_pretrained(out)
    assert AutoImageProcessor.from_pretrained(out) is not None
    for name, value in encoder.backbone.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


def test_paper_objective_decreases_on_a_toy_problem():
    torch.manual_seed(0)
    features = torch.nn.Parameter(torch.randn(32, 8))
    labels = torch.arange(32) % 4
    heads = LockHeads(authorized=torch.nn.Linear(8, 4), adversary=torch.nn.Linear(8, 4))
    heads.authorized.requires_grad_(False)
    heads.adversary.requires_grad_(False)
    objective = PaperObjective(alpha=1e3)
    optimizer = torch.optim.Adam([features], lr=0.05)
    start = objective.terms(features[:16], labels[:16], features[16:], labels[16:], heads)
    for _ in range(30):
        terms = objective.terms(features[:16], labels[:16], features[16:], labels[16:], heads)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    final = objective.terms(features[:16], labels[:16], features[16:], labels[16:], heads)
    assert float(final.total) < float(start.total) - 1.0
    assert float(final.authorized) < float(start.authorized)  # the authorized task's loss goes down
    assert float(final.prohibited) > float(start.prohibited)  # the adversary's loss is pushed up


def test_config_yaml_round_trip_and_reference_preset(tmp_path):
    path = tmp_path / "lock.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "num_rounds": 4, "adversary_kinds": ["mlp"]}))
    (config,) = HfArgumentParser(EncoderLockConfig).parse_yaml_file(str(path))
    assert config.num_rounds == 4 and config.adversary_kinds == ["mlp"]
    assert config.max_steps == 4 * config.update_steps_per_round
    reference = EncoderLockConfig.reference(output_dir=str(tmp_path))
    assert (reference.weights_per_round, reference.layers_per_round, reference.alpha, reference.learning_rate) == (
        100,
        1,
        1e3,
        1e-2,
    )
    with pytest.raises(ValueError, match="num_rounds"):
        EncoderLockConfig(output_dir=str(tmp_path), num_rounds=0)


def test_identical_domains_are_refused(tmp_path, domains):
    authorized = domains[0]
    with pytest.raises(LockDataError, match="identical"):
        EncoderLockTrainer(tiny_vit_encoder(image_size=16, patch_size=4), _config(tmp_path), authorized, authorized)


def test_mask_is_checkpointed_and_restored_on_resume(tmp_path, domains):
    encoder, trainer = _trainer(tmp_path, domains, save_strategy="steps", save_steps=3, best_model_criterion="last")
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    saved = load_mask(checkpoint / MASK_FILE)
    assert sum(int(m.sum()) for m in saved.values()) == 15

    resumed_encoder, resumed = _trainer(tmp_path, domains, save_strategy="no", best_model_criterion="last")
    resumed._load_from_checkpoint(str(checkpoint))
    saved_weights = AutoModel.from_pretrained(checkpoint).state_dict()
    for name, value in resumed_encoder.backbone.state_dict().items():
        assert torch.equal(value, saved_weights[name]), f"{name} was not restored from the checkpoint"
    resumed.train(resume_from_checkpoint=str(checkpoint))
    final = {name.removeprefix("backbone."): m for name, m in resumed.mask.items()}
    assert sum(int(m.sum()) for m in final.values()) == 30
    for name, m in saved.items():
        assert bool(final[name][m].all()), f"entries of {name} selected before the checkpoint were lost"


def _files(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def test_interrupted_save_leaves_no_folder_that_looks_complete(tmp_path, domains, monkeypatch):
    import hf_encoderlock.lock.trainer as trainer_module

    _, trainer = _trainer(tmp_path, domains)
    out = tmp_path / "locked"
    trainer.save_model(str(out))
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "optimizer.pt").write_text("kept")  # not written by _save: must survive a re-save
    complete = _files(out)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "write_model_card", disk_full)  # the last file _save writes
        with pytest.raises(OSError, match="disk full"):
            trainer.save_model(str(tmp_path / "fresh"))
        assert not (tmp_path / "fresh").exists()
        with pytest.raises(OSError, match="disk full"):
            trainer.save_model(str(out))
        assert _files(out) == complete, "a failed save touched the earlier complete save"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    trainer.save_model(str(out))  # replacing a save keeps what it does not write, and names the real folder
    assert (out / "checkpoint-1" / "optimizer.pt").read_text() == "kept"
    assert (out / "config.json").is_file() and "partial" not in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


class _StopAt(TrainerCallback):
    """Stops training after ``step`` update steps, like a run killed right after its checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize(
    "objective, stop_step",
    [("paper", 3), ("information", 2)],
    ids=["paper-mid-round-end-of-epoch", "information-round-start-mid-epoch"],
)
def test_killed_run_resumes_to_the_same_mask_and_bit_identical_weights(tmp_path, domains, objective, stop_step):
    """Mid-round (paper): the heads must come from the checkpoint; at a round start (information): the
    objective's normalisation reference must. Each epoch is 3 steps, so both data-skipping paths are covered."""
    config = dict(
        num_rounds=3,
        update_steps_per_round=2,
        save_strategy="steps",
        save_steps=stop_step,
        challenge_every=1,
        objective=objective,
        best_model_criterion="gap",
    )
    whole_encoder, whole = _trainer(tmp_path / "whole", domains, **config)
    whole.train()

    _, killed = _trainer(tmp_path / "killed", domains, **config)
    killed.add_callback(_StopAt(stop_step))
    killed.train()
    checkpoint = tmp_path / "killed" / "run" / f"checkpoint-{stop_step}"
    assert (checkpoint / "encoderlock_state.json").is_file()

    resumed_encoder, resumed = _trainer(tmp_path / "killed", domains, **config)  # a fresh process: new encoder
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert set(resumed.mask) == set(whole.mask)
    for name, m in whole.mask.items():
        assert torch.equal(resumed.mask[name], m), f"mask of {name} differs after resume"
    for name, value in whole_encoder.state_dict().items():
        assert torch.equal(resumed_encoder.state_dict()[name], value), f"{name} differs after resume"
    assert resumed.best_round == whole.best_round and resumed.best_gap == whole.best_gap
    for role in ("authorized", "adversary"):
        whole_head, resumed_head = getattr(whole.heads, role).state_dict(), getattr(resumed.heads, role).state_dict()
        assert all(torch.equal(resumed_head[k].cpu(), v.cpu()) for k, v in whole_head.items()), f"{role} head differs"
    whole_losses = [e["loss"] for e in whole.state.log_history if "loss" in e]
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert resumed_losses == whole_losses


class _PoisonableObjective(PaperObjective):
    """The paper's objective whose prohibited term turns NaN once ``poisoned`` is set."""

    poisoned = False

    def terms(
        self,
        authorized_features,
        authorized_labels,
        prohibited_features,
        prohibited_labels,
        heads,
        authorized_reference=None,
    ):
        if self.poisoned:
            prohibited_features = prohibited_features * float("nan")
        return super().terms(authorized_features, authorized_labels, prohibited_features, prohibited_labels, heads)


class _PoisonAt(TrainerCallback):
    def __init__(self, objective: _PoisonableObjective, global_step: int) -> None:
        self.objective, self.global_step = objective, global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self.objective.poisoned = state.global_step >= self.global_step


def test_nan_loss_stops_the_run_naming_the_step_and_terms(tmp_path, domains):
    objective = _PoisonableObjective()
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = _config(tmp_path, save_strategy="steps", save_steps=1)  # 2 rounds x 3 steps: step 3 is mid-round 0
    trainer = EncoderLockTrainer(encoder, args, domains[0], domains[1], objective=objective)
    trainer.add_callback(_PoisonAt(objective, global_step=2))
    with pytest.raises(NonFiniteLossError, match=r"nan at update step 3 of 6 \(round 0\).*loss_prohibited=nan"):
        trainer.train()
    assert issubclass(NonFiniteLossError, FloatingPointError)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1", "checkpoint-2"]  # nothing after the bad step
    last_good = AutoModel.from_pretrained(run / "checkpoint-2").state_dict()
    for name, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, last_good[name]), f"{name} was updated by the non-finite step"


def test_own_heads_reported_are_the_stale_ones_the_kept_encoder_trained_against(tmp_path, domains):
    """With challenges only at the start and the end, the kept encoder is the final one; its fresh heads come from
    the final challenge, while the heads its updates trained against are the round-0 ones: evaluate reports those."""
    encoder, trainer = _trainer(tmp_path, domains, challenge_every=0)
    trainer.challenge(round_index=0)
    round0 = trainer.heads
    trainer.train()
    assert trainer.best_round == trainer.args.num_rounds
    assert trainer.stale_heads is round0 and trainer.heads is not round0
    metrics = trainer.evaluate()
    _, _, eval_a, eval_p = domains
    from hf_encoderlock.data.lock_tensors import preprocess_domain
    from hf_encoderlock.probing.heads import accuracy

    data = preprocess_domain(encoder, eval_p, "green")
    expected = accuracy(round0.adversary.cpu(), trainer.encode(data), data.labels)
    assert metrics["eval_prohibited_head_accuracy"] == pytest.approx(expected)


def test_finetune_aware_lock_simulates_attacker_steps_and_changes_only_selected_weights(tmp_path, domains):
    encoder, trainer = _trainer(
        tmp_path, domains, finetune_aware_steps=2, finetune_aware_lr=0.05, best_model_criterion="last"
    )
    trainer.challenge(round_index=0)
    pixels = trainer.lock_prohibited.pixel_values[:12]
    labels = trainer.lock_prohibited.labels[:12]
    # One simulated step: with two sign steps of equal size a weight can step and step back to the same bits
    # (seen for the final layernorm's bias), which says nothing about whether the attacker step reached it.
    trainer.args.finetune_aware_steps = 1
    weights = trainer._simulated_attacker_weights(pixels, labels)
    trainer.args.finetune_aware_steps = 2
    moved = [
        name for name, param in encoder.named_parameters() if not torch.equal(weights[name].detach(), param.detach())
    ]
    unmoved = {name for name, _ in encoder.named_parameters()} - set(moved)
    assert moved and all(".pooler." in name for name in unmoved)  # every weight the features use is fine-tuned
    candidate = next(iter(trainer.candidates))
    assert weights[candidate].requires_grad and weights[candidate].grad_fn is not None  # first-order path to the lock
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    trainer.train()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in encoder.named_parameters())
    assert 0 < changed <= sum(int(m.sum()) for m in trainer.mask.values())
    assert any("lock/finetune_aware_total" in entry for entry in trainer.state.log_history)
    with pytest.raises(ValueError, match="contrastive"):
        _config(tmp_path, finetune_aware_steps=1, objective="contrastive")
