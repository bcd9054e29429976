"""EncoderLockTrainer on a tiny ViT: exact masked updates, logging, saving, resuming, non-finite losses."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModel, TrainerCallback

from hf_encoderlock.data.lock_tensors import LockDataError
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.challenger import simulated_attacker_weights
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.objectives import PaperObjective
from hf_encoderlock.lock.selection import load_mask
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, MASK_FILE, EncoderLockTrainer, NonFiniteLossError
from hf_encoderlock.probing.sanitize import PILED_UP_FACTOR, piled_up
from tests.helpers import toy_domain


@pytest.mark.parametrize(
    "overrides",
    [
        dict(weight_decay=0.1, max_grad_norm=0.5, gradient_accumulation_steps=2),
        dict(weight_decay=0.05, bf16=True),
    ],
    ids=["adamw-clip-accumulate", "bf16"],
)
def test_only_selected_entries_change(tiny_trainer, overrides):
    encoder, trainer = tiny_trainer(best_model_criterion="last", **overrides)
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


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_bounded_updates_keep_changed_weights_in_their_tensor_range_and_leave_the_rest(tiny_trainer, jitter):
    encoder, trainer = tiny_trainer(
        best_model_criterion="last", weight_bound=1.0, bound_jitter=jitter, learning_rate=0.5
    )
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    trainer.train()
    in_edge_band, piled = 0, 0
    for name, selected in trainer.mask.items():
        param = dict(encoder.named_parameters())[name].detach()
        original = before[name]
        median = original.median()
        scale = 1.4826 * (original - median).abs().median()
        low, high = float(median - scale), float(median + scale)
        # inside the range, or no further out than the entry's own unlocked value
        low_i, high_i = original.clamp(max=low)[selected], original.clamp(min=high)[selected]
        assert bool(((param[selected] >= low_i - 1e-6) & (param[selected] <= high_i + 1e-6)).all()), name
        # unselected entries are never clamped, even where they lie outside the range
        assert torch.equal(param[~selected], original[~selected]), name
        assert bool(((original < low) | (original > high)).any()), name  # there were such entries to leave alone
        # the weights the bound stopped lie on its edges: one value each without jitter, a band with it
        z = ((param - median) / scale).abs()
        moved = selected & (param != original)
        in_edge_band += int((moved & (z >= 1 - jitter - 1e-4) & (z <= 1 + 1e-4)).sum())
        piled += int(piled_up(param, PILED_UP_FACTOR)[selected].sum())
    assert in_edge_band > 0  # at lr 0.5 the bound is what stopped some weights
    assert (piled > 0) == (jitter == 0.0)  # the audit's tell-tale, which the jitter removes


class _SnapshotAt(TrainerCallback):
    """Keeps a copy of the encoder's weights after ``step`` update steps."""

    def __init__(self, encoder, step: int) -> None:
        self.encoder, self.step, self.weights = encoder, step, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.weights = {name: p.detach().clone() for name, p in self.encoder.named_parameters()}


class _RecordLearningRate(TrainerCallback):
    """Appends the optimiser's learning rate as each step is taken (registered after the lock's own callback)."""

    def __init__(self, trainer, rates: list) -> None:
        self.trainer, self.rates = trainer, rates

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.rates.append(self.trainer.optimizer.param_groups[0]["lr"])

    def on_step_begin(self, args, state, control, **kwargs):
        self.moments_at = getattr(self, "moments_at", {})
        self.moments_at[state.global_step] = len(self.trainer.optimizer.state)


def test_repair_steps_follow_the_rounds_inside_the_mask_unprojected_on_the_authorized_loss(tiny_trainer):
    overrides = dict(
        objective="information", info_preserve_weight=1.0, authorized_projection=0.0, best_model_criterion="last"
    )
    encoder, trainer = tiny_trainer(repair_steps=4, repair_learning_rate=0.003, **overrides)
    rates = []
    recorder = _RecordLearningRate(trainer, rates)
    trainer.add_callback(recorder)
    assert trainer.args.max_steps == 2 * 3 + 4 and trainer.args.lock_steps == 6
    start = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    snapshot = _SnapshotAt(encoder, 6)
    trainer.add_callback(snapshot)
    trainer.train()
    assert trainer.state.global_step == 10 and trainer.rounds_completed_in_mask == 2
    assert rates == [0.01] * 6 + [0.003] * 4  # what the optimiser stepped with
    # the repair starts from fresh optimiser moments (the lock's were only ever applied projected)
    assert recorder.moments_at[5] > 0 and recorder.moments_at[6] == 0 and recorder.moments_at[7] > 0
    mask = trainer.mask
    assert sum(int(m.sum()) for m in mask.values()) == 2 * 15  # the repair selected nothing
    logs = [e for e in trainer.state.log_history if "lock/loss_authorized" in e]
    assert [float(e.get("lock/repair_learning_rate", 0)) for e in logs] == [0] * 6 + [0.003] * 4
    # the Trainer's own learning_rate column says what the steps ran at (it showed the lock's rate during repair)
    assert [e["learning_rate"] for e in logs] == [pytest.approx(0.01)] * 6 + [pytest.approx(0.003)] * 4
    for e in logs[6:]:  # a repair step's loss is the authorized side alone
        assert float(e["loss"]) == pytest.approx(float(e["lock/loss_authorized"]), rel=1e-3)
    after_rounds, now = snapshot.weights, dict(encoder.named_parameters())
    for name, param in now.items():
        if name not in mask:
            assert torch.equal(param.detach(), start[name]), f"{name} is outside the mask but changed"
        else:
            assert torch.equal(param.detach()[~mask[name]], start[name][~mask[name]])
    names = trainer.projection.names
    assert names
    # the rounds' change is its own projection; the repair's change is not
    rounds_projected = {name: after_rounds[name].clone() for name in names}
    trainer.projection.project(rounds_projected, {name: start[name] for name in names})
    repair_projected = {name: now[name].detach().clone() for name in names}
    trainer.projection.project(repair_projected, {name: after_rounds[name] for name in names})
    unprojected = 0
    for name in names:
        assert torch.allclose(rounds_projected[name], after_rounds[name], atol=1e-6), name
        unprojected += not torch.allclose(repair_projected[name], now[name].detach(), atol=1e-6)
    assert unprojected > 0


@pytest.mark.parametrize("blocks, dropped", [([-1], True), (None, False)], ids=["no-room", "room"])
def test_auto_projection_is_dropped_when_it_leaves_the_prohibited_gradient_no_room(
    tiny_trainer, caplog, blocks, dropped
):
    """Red authorized images use every input direction of the patch embedding (the only candidate): 'auto' drops the
    projection at the first round and runs at unprojected_learning_rate. With every block a candidate, deeper layers
    leave room and the projection stays."""
    _, trainer = tiny_trainer(
        objective="information",
        info_preserve_weight=1.0,
        authorized_projection="auto",
        candidate_blocks=blocks,
        unprojected_learning_rate=0.004,
        repair_steps=2,
        repair_learning_rate=0.002,
        max_authorized_drift=1e-9,  # guards projected steps only
        best_model_criterion="last",
    )
    rates = []
    recorder = _RecordLearningRate(trainer, rates)
    trainer.add_callback(recorder)
    with caplog.at_level("WARNING", logger="hf_encoderlock.lock.rounds"):
        trainer.train()
    warned = [r.getMessage() for r in caplog.records if "runs unprojected" in r.getMessage()]
    (first,) = [h for h in trainer.history if h.get("round") == 0 and "mask_size" in h]
    assert trainer.lock_state.projection_dropped is dropped and trainer.lock_summary()["projection_dropped"] is dropped
    assert first.get("projection_dropped", False) is dropped
    assert (first["projection_free_share"] < 0.01) is dropped
    logs = [e for e in trainer.state.log_history if "lock/loss_authorized" in e]
    drift = [float(e["lock/authorized_drift"]) for e in logs]
    if dropped:
        assert trainer.projection is None and len(warned) == 1
        assert "projection_free_share" not in [h for h in trainer.history if "mask_size" in h][1]
        # every step unprojected at its own rate, unguarded; the repair steps continue the lock (its whole loss, the
        # optimiser's moments kept)
        assert rates == pytest.approx([0.004] * 8)
        assert all(recorder.moments_at[step] > 0 for step in (6, 7))
        assert not any("lock/repair_learning_rate" in e for e in logs)
        assert float(logs[-1]["loss"]) > float(logs[-1]["lock/loss_authorized"]) + 1e-3
        assert sum(int(m.sum()) for m in trainer.mask.values()) == 2 * 15  # round 0 selected once, unprojected
    else:
        assert trainer.projection is not None and trainer.projection.names and not warned
        assert rates[:6] == pytest.approx([0.01 * min(1.0, 1e-9 / d) if d > 0 else 0.01 for d in drift[:6]])
        assert rates[6:] == [0.002, 0.002]  # the repair's own rate, unguarded


@pytest.mark.parametrize("learning_rate, warned", [(0.3, True), (0.01, False)])
def test_unprojected_lock_at_a_projected_learning_rate_is_warned_about_before_any_work(
    tiny_lock_config, toy_domains, caplog, learning_rate, warned
):
    args = tiny_lock_config(authorized_projection=None, learning_rate=learning_rate)
    with caplog.at_level("WARNING", logger="hf_encoderlock.lock.trainer"):
        EncoderLockTrainer(
            tiny_vit_encoder(seed=0, image_size=16, patch_size=4),
            args,
            toy_domains.authorized,
            toy_domains.prohibited,
            "red",
            "green",
        )
    messages = [r.getMessage() for r in caplog.records if "authorized_projection is off" in r.getMessage()]
    assert len(messages) == int(warned)
    if warned:
        assert "learning_rate is 0.3" in messages[0] and "--learning_rate 0.01" in messages[0]


def test_drift_guard_scales_each_projected_step_by_its_drift_and_holds_the_drift_down(tiny_trainer):
    """Projected at 0.01 and lr 0.1, the tiny lock's authorized drift grows to 0.01 in six steps; a guard at 0.002
    scales every step past it by 0.002 / drift, and the drift stays lower."""
    overrides = dict(
        objective="information",
        info_preserve_weight=1.0,
        authorized_projection=0.01,
        learning_rate=0.1,
        best_model_criterion="last",
    )
    drifts = {}
    for tolerance in (0.0, 0.002):
        _, trainer = tiny_trainer(max_authorized_drift=tolerance, **overrides)
        rates = []
        trainer.add_callback(_RecordLearningRate(trainer, rates))
        trainer.train()
        logs = [e for e in trainer.state.log_history if "lock/authorized_drift" in e]
        assert len(logs) == len(rates) == 6
        drift = [float(e["lock/authorized_drift"]) for e in logs]
        drifts[tolerance] = drift
        if tolerance == 0:
            assert rates == [0.1] * 6 and not any("lock/drift_guard_scale" in e for e in logs)
            continue
        # each step's rate: the scheduler's, times tolerance / drift once that step's drift is above the tolerance
        expected = [0.1 * min(1.0, tolerance / d) if d > 0 else 0.1 for d in drift]
        assert rates == pytest.approx(expected, rel=1e-5)
        assert [float(e["lock/drift_guard_scale"]) for e in logs] == pytest.approx([r / 0.1 for r in rates], rel=1e-3)
        assert rates[0] == 0.1 and min(rates) < 0.05  # the first step has no drift yet; later ones are guarded
    assert max(drifts[0.0]) > 0.005 and max(drifts[0.002]) < max(drifts[0.0])


def test_drift_guard_leaves_objectives_without_a_drift_alone(tiny_trainer):
    """The paper's objective measures no authorized drift: a guard has nothing to act on and every step runs at the
    scheduler's rate."""
    _, trainer = tiny_trainer(objective="paper", authorized_projection=0.01, max_authorized_drift=1e-9)
    rates = []
    trainer.add_callback(_RecordLearningRate(trainer, rates))
    trainer.train()
    assert rates == [0.01] * 6
    assert not any("lock/drift_guard_scale" in e for e in trainer.state.log_history)


@pytest.mark.parametrize("factor, usable", [(2, 2), (9, 3)])
def test_prohibited_batches_are_factor_times_the_authorized_ones(tiny_trainer, caplog, factor, usable):
    """The tiny lock holds 38 pairs and batches of 12 authorized images: a factor of 2 gives 24 prohibited images a
    step; 9 would need 108, so it is lowered to the 3 that fit in one pass, with a warning before any work."""
    with caplog.at_level("WARNING", logger="hf_encoderlock.lock.trainer"):
        _, trainer = tiny_trainer(prohibited_batch_factor=factor)
    warned = [r.getMessage() for r in caplog.records if "prohibited_batch_factor" in r.getMessage()]
    assert len(warned) == int(factor != usable)
    if warned:
        assert f"prohibited_batch_factor {factor} needs 108" in warned[0] and f"using {usable}" in warned[0]
    sizes, compute_loss = [], trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        sizes.append((len(inputs["authorized_pixel_values"]), len(inputs["prohibited_pixel_values"])))
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    assert sizes == [(12, 12 * usable)] * 6


def test_logs_rounds_and_saves_a_loadable_encoder(tmp_path, tiny_trainer):
    encoder, trainer = tiny_trainer()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "lock/mask_size" in entry]
    assert [e["lock/mask_size"] for e in logged] == [15, 30]  # integers, not floats printed as '1.02e+04'
    assert all(type(e["lock/mask_size"]) is int and type(e["lock/round"]) is int for e in logged)
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
    # each changed tensor named as the weights file holds it (transformers 5 renames ViT's modules in memory)
    keys = summary["mask"]["saved_keys"]
    assert set(keys) == set(summary["mask"]["per_layer"]) and any(key != name for name, key in keys.items())
    params = dict(encoder.backbone.named_parameters())
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert all(torch.equal(weights.get_tensor(key), params[name]) for name, key in keys.items())
    assert {"transformers", "torch", "hf_encoderlock"} <= set(summary["versions"])
    assert (out / MASK_FILE).is_file()
    reloaded = AutoModel.from_pretrained(out)
    assert AutoImageProcessor.from_pretrained(out) is not None
    for name, value in encoder.backbone.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


def test_a_budget_share_of_the_candidates_sets_the_weights_a_round_and_is_saved_with_the_lock(tmp_path, tiny_trainer):
    _, plain = tiny_trainer()
    candidates = sum(param.numel() for param in plain.candidates.values())
    share = 0.02  # of the tiny ViT's candidates over the preset's 2 rounds: not the preset's 15 a round
    expected = int(share * candidates / 2)
    assert expected not in (0, plain.args.weights_per_round)
    _, trainer = tiny_trainer(weight_budget_share=share)
    assert trainer.args.weights_per_round == expected
    trainer.train()
    assert sum(int(m.sum()) for m in trainer.mask.values()) == 2 * expected
    out = tmp_path / "locked"
    trainer.save_model(str(out))
    saved = json.loads((out / LOCK_CONFIG_FILE).read_text())["hyperparameters"]
    assert (saved["weight_budget_share"], saved["weights_per_round"]) == (share, expected)


def test_identical_domains_are_refused(toy_domains, tiny_lock_config):
    authorized = toy_domains[0]
    with pytest.raises(LockDataError, match="identical"):
        EncoderLockTrainer(tiny_vit_encoder(image_size=16, patch_size=4), tiny_lock_config(), authorized, authorized)


def test_mask_is_checkpointed_and_restored_on_resume(tmp_path, tiny_trainer):
    encoder, trainer = tiny_trainer(save_strategy="steps", save_steps=3, best_model_criterion="last")
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert checkpoint.stat().st_mode & 0o777 == 0o700  # the optimizer state in it gives the mask away
    saved = load_mask(checkpoint / MASK_FILE)
    assert sum(int(m.sum()) for m in saved.values()) == 15

    # whether a finished result may be replaced is no lock setting: a resume may change it
    resumed_encoder, resumed = tiny_trainer(save_strategy="no", best_model_criterion="last", overwrite_output_dir=True)
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


def test_interrupted_save_leaves_no_folder_that_looks_complete(tmp_path, tiny_trainer, monkeypatch):
    import hf_encoderlock.lock.trainer as trainer_module

    _, trainer = tiny_trainer()
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
    "objective, stop_step, extra",
    [
        ("paper", 3, {}),
        ("information", 2, {}),
        ("information", 3, {"authorized_projection": 0.01}),
        ("information", 6, {"authorized_projection": 0.01, "repair_steps": 3}),
        ("information", 7, {"authorized_projection": 0.01, "repair_steps": 3}),
        (
            "information",
            3,
            {
                "authorized_projection": "auto",
                "candidate_blocks": [-1],
                "info_preserve_weight": 1.0,
                "max_authorized_drift": 0.01,
            },
        ),
        ("information", 3, {"colour_map_every": 2}),
    ],
    ids=[
        "paper-mid-round-end-of-epoch",
        "information-round-start-mid-epoch",
        "information-projected-mid-round",
        "projected-killed-before-the-repair",
        "projected-killed-inside-the-repair",
        "auto-projection-dropped-drift-guarded-mid-round",
        "colour-map-fitted-at-round-0-killed-mid-round-1",
    ],
)
def test_killed_run_resumes_to_the_same_mask_and_bit_identical_weights(
    tmp_path, tiny_trainer, objective, stop_step, extra
):
    """Mid-round (paper): the heads must come from the checkpoint; at a round start (information): the
    objective's normalisation reference must; projected (mid-round): the projection is rebuilt from the unlocked
    encoder, not from the checkpoint's weights; 'auto' dropped at the first round: the decision (and with it the
    unprojected learning rate) must come from the checkpoint. Each epoch is 3 steps, so both data-skipping paths are
    covered."""
    config = dict(
        num_rounds=3,
        update_steps_per_round=2,
        save_strategy="steps",
        save_steps=stop_step,
        challenge_every=1,
        objective=objective,
        best_model_criterion="gap",
        **extra,
    )
    whole_encoder, whole = tiny_trainer(tmp_path / "whole", **config)
    whole.train()

    _, killed = tiny_trainer(tmp_path / "killed", **config)
    killed.add_callback(_StopAt(stop_step))
    killed.train()
    checkpoint = tmp_path / "killed" / "run" / f"checkpoint-{stop_step}"
    assert (checkpoint / "encoderlock_state.json").is_file()

    resumed_encoder, resumed = tiny_trainer(tmp_path / "killed", **config)  # a fresh process: new encoder
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
    assert resumed.lock_state.projection_dropped == whole.lock_state.projection_dropped
    assert (resumed.projection is None) == (whole.projection is None)
    whole_losses = [e["loss"] for e in whole.state.log_history if "loss" in e]
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert resumed_losses == whole_losses
    if extra.get("colour_map_every"):  # the map fitted before the kill came from the checkpoint, the next was refitted
        for name, value in whole.lock_state.colour_map.state_dict().items():
            assert torch.equal(resumed.lock_state.colour_map.state_dict()[name], value), f"colour map {name} differs"


def test_the_lock_refits_the_attackers_colour_map_and_shows_half_of_each_prohibited_batch_under_it(tiny_trainer):
    encoder, trainer = tiny_trainer(num_rounds=3, update_steps_per_round=1, colour_map_every=2)
    trainer.train()
    fits = [h for h in trainer.lock_state.history if "time_colour_map_s" in h]
    assert [h["round"] for h in fits] == [0, 2]
    assert all(0 < h["colour_map_images"] <= len(trainer.lock_prohibited) for h in fits)
    colour_map = trainer.lock_state.colour_map
    assert colour_map is not None and not any(p.requires_grad for p in colour_map.parameters())
    assert any(not torch.equal(p, torch.eye(3).reshape(3, 3, 1, 1)) for p in [colour_map.affine.weight])

    seen = []
    real = trainer._lock_features

    def spy(model, pixel_values, num_authorized):
        seen.append(pixel_values[num_authorized:].clone())
        return real(model, pixel_values, num_authorized)

    trainer._lock_features = spy
    batch = trainer.lock_prohibited.take(torch.arange(4))
    authorized = trainer.lock_authorized.take(torch.arange(2))
    trainer.objective_terms(encoder, authorized.pixel_values, authorized.labels, batch.pixel_values, batch.labels)
    with torch.no_grad():
        mapped = colour_map(batch.pixel_values[2:])
    assert torch.equal(seen[0][:2], batch.pixel_values[:2]) and torch.equal(seen[0][2:], mapped)
    assert not torch.equal(mapped, batch.pixel_values[2:])


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


def test_nan_loss_stops_the_run_naming_the_step_and_terms(tmp_path, toy_domains, tiny_lock_config):
    objective = _PoisonableObjective()
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = tiny_lock_config(save_strategy="steps", save_steps=1)  # 2 rounds x 3 steps: step 3 is mid-round 0
    trainer = EncoderLockTrainer(encoder, args, toy_domains[0], toy_domains[1], objective=objective)
    trainer.add_callback(_PoisonAt(objective, global_step=2))
    with pytest.raises(NonFiniteLossError, match=r"nan at update step 3 of 6 \(round 0\).*loss_prohibited=nan"):
        trainer.train()
    assert issubclass(NonFiniteLossError, FloatingPointError)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1", "checkpoint-2"]  # nothing after the bad step
    last_good = AutoModel.from_pretrained(run / "checkpoint-2").state_dict()
    for name, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, last_good[name]), f"{name} was updated by the non-finite step"


def test_own_heads_reported_are_the_stale_ones_the_kept_encoder_trained_against(toy_domains, tiny_trainer):
    """With challenges only at the start and the end, the kept encoder is the final one; its fresh heads come from
    the final challenge, while the heads its updates trained against are the round-0 ones: evaluate reports those."""
    encoder, trainer = tiny_trainer(challenge_every=0)
    trainer.challenge(round_index=0)
    round0 = trainer.heads
    trainer.train()
    assert trainer.best_round == trainer.args.num_rounds
    assert trainer.stale_heads is round0 and trainer.heads is not round0
    metrics = trainer.evaluate()
    _, _, eval_a, eval_p = toy_domains
    from hf_encoderlock.data.lock_tensors import preprocess_domain
    from hf_encoderlock.probing.heads import head_accuracy

    data = preprocess_domain(encoder, eval_p, "green")
    expected = head_accuracy(round0.adversary.cpu(), trainer.encode(data), data.labels)
    assert metrics["eval_prohibited_head_accuracy"] == pytest.approx(expected)


def test_finetune_aware_lock_simulates_attacker_steps_and_changes_only_selected_weights(tiny_trainer, tiny_lock_config):
    encoder, trainer = tiny_trainer(finetune_aware_steps=2, finetune_aware_lr=0.05, best_model_criterion="last")
    trainer.challenge(round_index=0)
    pixels = trainer.lock_prohibited.pixel_values[:12]
    labels = trainer.lock_prohibited.labels[:12]
    # One simulated step: with two sign steps of equal size a weight can step and step back to the same bits
    # (seen for the final layernorm's bias), which says nothing about whether the attacker step reached it.
    weights = simulated_attacker_weights(encoder, trainer.heads.adversary, pixels, labels, 1, 0.05)
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
        tiny_lock_config(finetune_aware_steps=1, objective="contrastive")


def test_prohibited_poolings_concatenate_features_from_one_pass(tmp_path):
    base = dict(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", per_device_train_batch_size=8)
    base.update(num_rounds=2, weights_per_round=15)  # a budget the tiny ViT's candidate weights can hold
    with pytest.raises(ValueError, match="prohibited_poolings"):
        EncoderLockConfig(objective="paper", prohibited_poolings=["cls", "mean"], **base)
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = EncoderLockConfig(objective="information", prohibited_poolings=["cls", "mean"], **base)
    trainer = EncoderLockTrainer(encoder, args, toy_domain(30, 0, "red"), toy_domain(30, 1, "green"), "red", "green")
    pixels = torch.cat([trainer.lock_authorized.pixel_values[:3], trainer.lock_prohibited.pixel_values[:5]])
    a_features, p_features = trainer._lock_features(encoder, pixels, 3)
    dim = encoder(pixels[:1]).shape[1]
    assert a_features.shape == (3, dim) and p_features.shape == (5, 2 * dim)
    assert torch.allclose(p_features[:, dim:], encoder.features(pixels[3:], "mean"), atol=1e-5)


def test_prohibited_transforms_add_the_attackers_views_to_the_lock_data(tiny_trainer):
    _, plain = tiny_trainer()
    _, trainer = tiny_trainer(prohibited_transforms=["greyscale"])
    plain_count = len(plain.lock_prohibited) + len(plain.val_prohibited)
    assert len(trainer.lock_prohibited) + len(trainer.val_prohibited) == 2 * plain_count
    pixels = torch.cat([trainer.lock_prohibited.take(torch.arange(len(trainer.lock_prohibited))).pixel_values])
    # the greyscale copies have equal channels once the processor's per-channel normalisation is undone
    mean, std = (torch.as_tensor(v).view(1, 3, 1, 1) for v in trainer._normalization)
    raw = pixels * std + mean
    grey = (raw[:, 0] - raw[:, 2]).abs().amax(dim=(1, 2)) < 1e-2
    assert 0 < int(grey.sum()) < len(raw)
    with pytest.raises(ValueError, match="prohibited_transforms"):
        EncoderLockConfig(output_dir="unused", prohibited_transforms=["sepia"])


def test_view_batches_lock_on_one_view_per_batch_with_each_image_and_its_copy_in_one_part(tiny_trainer):
    _, trainer = tiny_trainer(prohibited_transforms=["greyscale"], prohibited_view_batches=True)
    assert trainer.lock_data.prohibited_views == 2
    mean, std = (torch.as_tensor(v).view(1, 3, 1, 1) for v in trainer._normalization)
    for part in (trainer.lock_prohibited, trainer.val_prohibited):
        raw = part.take(torch.arange(len(part))).pixel_values * std + mean
        grey = (raw[:, 0] - raw[:, 2]).abs().amax(dim=(1, 2)) < 1e-2
        half = len(part) // 2
        assert not grey[:half].any() and grey[half:].all()  # the originals, then their copies
        # each copy is its original in grey (the same image: the same split part)
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        assert torch.allclose(raw[half:, 0], (raw[:half] * luma).sum(dim=1), atol=0.02)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    raw = batch["prohibited_pixel_values"] * std + mean
    grey = (raw[:, 0] - raw[:, 2]).abs().amax(dim=(1, 2)) < 1e-2
    assert grey.all() or not grey.any()
    trainer.train()
    assert sum(int(m.sum()) for m in trainer.mask.values()) > 0
    with pytest.raises(ValueError, match="prohibited_view_batches needs prohibited_transforms"):
        EncoderLockConfig(output_dir="unused", prohibited_view_batches=True)


def test_copies_share_their_originals_split_part_and_mix_in_batches_without_view_batches(tiny_trainer):
    _, trainer = tiny_trainer(prohibited_transforms=["greyscale"])
    data = trainer.lock_data
    assert (data.prohibited_views, data.batch_views) == (2, 1)
    mean, std = (torch.as_tensor(v).view(1, 3, 1, 1) for v in trainer._normalization)
    for part in (data.lock_prohibited, data.val_prohibited):
        raw = part.take(torch.arange(len(part))).pixel_values * std + mean
        half = len(part) // 2
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        assert torch.allclose(raw[half:, 0], (raw[:half] * luma).sum(dim=1), atol=0.02)  # copy i is original i
    originals = data.original_prohibited
    assert torch.equal(originals.pixel_values, data.lock_prohibited.pixel_values[: len(data.lock_prohibited) // 2])
    pixels = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    raw = pixels["prohibited_pixel_values"] * std + mean
    grey = (raw[:, 0] - raw[:, 2]).abs().amax(dim=(1, 2)) < 1e-2
    assert 0 < int(grey.sum()) < len(grey)  # a batch mixes the views


def test_the_locks_colour_map_is_fitted_on_the_original_images(tiny_trainer, monkeypatch):
    import hf_encoderlock.lock.trainer as trainer_module

    fitted = []
    original_fit = trainer_module.fit_colour_map_to_pixels

    def recording_fit(encoder, pixels, *args, **kwargs):
        fitted.append(pixels.detach().cpu())
        return original_fit(encoder, pixels, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "fit_colour_map_to_pixels", recording_fit)
    _, trainer = tiny_trainer(prohibited_transforms=["greyscale"], colour_map_every=2, num_rounds=2)
    trainer.train()
    originals = trainer.lock_data.original_prohibited.pixel_values
    assert fitted and all(len(p) == len(originals) for p in fitted)
    assert all(torch.equal(p, originals) for p in fitted)  # every original (the set is under the fit's maximum)


def test_view_batches_give_each_copy_its_originals_pseudo_label(tiny_trainer):
    _, trainer = tiny_trainer(
        variant="unsupervised", prohibited_transforms=["greyscale", "invert"], prohibited_view_batches=True
    )
    for part in (trainer.lock_prohibited, trainer.val_prohibited):
        blocks = part.labels.view(3, -1)
        assert torch.equal(blocks[1], blocks[0]) and torch.equal(blocks[2], blocks[0])
    assert len(set(trainer.lock_prohibited.labels.tolist())) > 1


def test_prohibited_transforms_matching_the_authorized_statistics_lock_end_to_end(tiny_trainer):
    # the match_* transforms take their reference statistics from the authorized images, as the attacker's do
    _, plain = tiny_trainer()
    _, trainer = tiny_trainer(prohibited_transforms=["match_image_stats", "permute_channels:3"])
    plain_count = len(plain.lock_prohibited) + len(plain.val_prohibited)
    assert len(trainer.lock_prohibited) + len(trainer.val_prohibited) == 3 * plain_count
    trainer.train()
    assert sum(int(m.sum()) for m in trainer.mask.values()) > 0


class _StopAfter(TrainerCallback):
    """Ends training after ``step`` update steps, as an early-stopping or time-limit callback would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_an_early_stopped_lock_names_the_rounds_that_ran_and_says_what_was_skipped(tiny_trainer, caplog):
    encoder, trainer = tiny_trainer(num_rounds=3, repair_steps=2)
    trainer.add_callback(_StopAfter(3))  # round 0's three steps, then stop: rounds 2-3 and the repair never run
    with caplog.at_level("WARNING", logger="hf_encoderlock.lock.trainer"):
        trainer.train()
    assert "stopped early, at update step 3 of 11" in caplog.text
    assert "rounds 2-3 and the 2 repair steps did not run" in caplog.text
    summary = trainer.lock_summary()
    assert summary["rounds_completed"] == 1
    assert summary["best_round"] in (None, 1)  # never a round that did not run
    assert trainer.history[-1]["round"] <= 1
