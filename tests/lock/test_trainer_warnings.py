"""Warnings a lock gives about its own scale: a budget that is a large share of the candidate weights (before any
update), and authorized features that drifted far past the guard (at the end); and no warning about pinned memory on
a CPU-only machine."""

import warnings

import pytest
import torch

from hf_encoderlock.lock.rounds import BUDGET_WARNING_SHARE
from hf_encoderlock.lock.trainer import DRIFT_WARNING_FACTOR

LOGGER = "hf_encoderlock.lock.trainer"
ROUNDS_LOGGER = "hf_encoderlock.lock.rounds"  # the budget is the round driver's


def _warnings(caplog, words: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if words in record.getMessage()]


def test_a_budget_beyond_a_few_percent_of_the_candidates_warns_before_any_update(tiny_trainer, caplog):
    with caplog.at_level("WARNING", logger=ROUNDS_LOGGER):
        _, small = tiny_trainer()
    candidates = sum(param.numel() for param in small.candidates.values())
    assert 30 < BUDGET_WARNING_SHARE * candidates and not _warnings(caplog, "candidate weights")  # 2 x 15 weights
    per_round = int(2 * BUDGET_WARNING_SHARE * candidates / 2)  # twice the share over the preset's 2 rounds
    with caplog.at_level("WARNING", logger=ROUNDS_LOGGER):
        _, large = tiny_trainer(weights_per_round=per_round)
    (message,) = _warnings(caplog, "candidate weights")
    assert large.state.global_step == 0  # warned at construction, before the lock ran
    pct = round(100 * 2 * per_round / candidates)
    assert f"makes a budget of {2 * per_round} weights, {pct}% of the {candidates} candidate" in message
    assert "consider weights_per_round=" in message and "weight_budget_share" in message
    share = 2 * 2 * per_round / candidates  # the same budget, stated as a share: the advice speaks of the share
    with caplog.at_level("WARNING", logger=ROUNDS_LOGGER):
        caplog.clear()
        tiny_trainer(weight_budget_share=share)
    (message,) = _warnings(caplog, "candidate weights")
    assert message.startswith(f"weight_budget_share={share}") and "a smaller weight_budget_share" in message
    assert "consider weights_per_round" not in message


@pytest.mark.parametrize("guard, warns", [(1e-9, True), (1e6, False)], ids=["far-above", "within"])
def test_authorized_drift_far_above_the_guard_warns_at_the_end(tiny_trainer, caplog, guard, warns):
    _, trainer = tiny_trainer(
        objective="information", info_preserve_weight=1.0, max_authorized_drift=guard, best_model_criterion="last"
    )
    with caplog.at_level("WARNING", logger=LOGGER):
        trainer.train()
    drift = trainer.lock_state.last_logs["authorized_drift"]
    assert drift > DRIFT_WARNING_FACTOR * 1e-9  # the lock moved the authorized features at all
    found = _warnings(caplog, "times max_authorized_drift")
    assert bool(found) is warns
    if warns:
        assert f"{drift:.3g}" in found[0] and f"max_authorized_drift={guard:g}" in found[0]


@pytest.mark.skipif(torch.accelerator.is_available(), reason="pinning is only dropped without an accelerator")
def test_a_cpu_only_lock_does_not_warn_about_pinned_memory(tiny_trainer):
    """torch warned "'pin_memory' argument is set as true but no accelerator is found" in every CPU run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, trainer = tiny_trainer(num_rounds=1, use_cpu=False)  # use_cpu=True turns pinning off itself
        trainer.train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    assert trainer.args.dataloader_pin_memory is False
