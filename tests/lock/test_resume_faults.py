"""Resume reads only checkpoints whose files all load: a damaged newest one is passed over, by name, for the one
before it; with none left, or when named explicitly, the run stops with an error naming the damaged file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hf_encoderlock._files import LOCK_STATE_FILE, LOCK_TENSORS_FILE, MASK_FILE, MODEL_WEIGHTS_FILE

CHECKPOINTED = dict(num_rounds=2, update_steps_per_round=2, save_strategy="steps", save_steps=1, challenge_every=1)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short, a full disk


def _garble(path: Path) -> None:
    path.write_text('{"format": "encoderlock-state/v1", "head_lay')


# (file, damage): each leaves trainer_state.json intact, so the checkpoint still looks finished by that file alone
DAMAGES = [
    (MODEL_WEIGHTS_FILE, _truncate),
    ("optimizer.pt", _truncate),
    (MASK_FILE, _truncate),
    (LOCK_TENSORS_FILE, _truncate),
    (LOCK_STATE_FILE, _garble),
    ("rng_state.pth", _truncate),
]


def _checkpoints(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))


@pytest.mark.parametrize("file, damage", DAMAGES, ids=[name for name, _ in DAMAGES])
def test_a_damaged_newest_checkpoint_is_passed_over_by_name(tmp_path, tiny_trainer, caplog, file, damage):
    _, first = tiny_trainer(tmp_path, **CHECKPOINTED)
    first.train()
    *_, previous, newest = _checkpoints(tmp_path / "run")
    damage(newest / file)

    with pytest.raises(ValueError, match=rf"{newest.name} is not a complete checkpoint \({file}"):
        tiny_trainer(tmp_path, **CHECKPOINTED)[1].train(resume_from_checkpoint=str(newest))

    _, resumed = tiny_trainer(tmp_path, **CHECKPOINTED)
    with caplog.at_level(logging.WARNING, logger="hf_encoderlock"):
        resumed.train(resume_from_checkpoint=True)
    warned = [r.getMessage() for r in caplog.records if "passing over" in r.getMessage()]
    assert len(warned) == 1 and f"resuming from {previous.name}" in warned[0]
    assert f"{newest.name}: {file}" in warned[0]
    assert resumed.state.global_step == first.state.global_step  # the step lost with the damaged one, run again


def test_no_complete_checkpoint_left_is_an_error_naming_each(tmp_path, tiny_trainer):
    _, first = tiny_trainer(tmp_path, **CHECKPOINTED)
    first.train()
    checkpoints = _checkpoints(tmp_path / "run")
    for checkpoint in checkpoints:
        _truncate(checkpoint / MASK_FILE)
    _, resumed = tiny_trainer(tmp_path, **CHECKPOINTED)
    with pytest.raises(ValueError, match="no complete checkpoint") as refused:
        resumed.train(resume_from_checkpoint=True)
    for checkpoint in checkpoints:
        assert f"{checkpoint.name}: {MASK_FILE} does not load" in str(refused.value)
    assert resumed.state.global_step == 0
