"""EncoderLockTrainer never saves a broken encoder and resumes only from complete checkpoints of the same lock."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from hf_encoderlock._files import TRAINER_STATE_FILE
from hf_encoderlock.lock.state import last_complete_checkpoint
from hf_encoderlock.lock.trainer import NonFiniteWeightsError

CHECKPOINTED = dict(num_rounds=2, update_steps_per_round=2, save_strategy="steps", save_steps=1, challenge_every=1)


def test_a_nan_weight_is_named_and_nothing_is_saved(tmp_path, tiny_trainer):
    encoder, trainer = tiny_trainer(tmp_path)
    name, weight = next(iter(trainer.candidates.items()))
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    target = tmp_path / "saved"
    with pytest.raises(NonFiniteWeightsError, match=name.removeprefix("backbone.")):
        trainer.save_model(str(target))
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_resume_true_skips_a_checkpoint_cut_short(tmp_path, tiny_trainer):
    _, first = tiny_trainer(tmp_path, **CHECKPOINTED)
    first.train()
    run = tmp_path / "run"
    newest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (newest / TRAINER_STATE_FILE).unlink()  # killed (or disk full) before the Trainer wrote its state
    previous = run / f"checkpoint-{int(newest.name.split('-')[1]) - 1}"
    assert last_complete_checkpoint(run) == previous
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        tiny_trainer(tmp_path, **CHECKPOINTED)[1].train(resume_from_checkpoint=str(newest))
    _, resumed = tiny_trainer(tmp_path, **CHECKPOINTED)
    resumed.train(resume_from_checkpoint=True)  # the cut-short checkpoint is invisible to resume
    assert resumed.state.global_step == first.state.global_step


def test_resume_refuses_a_checkpoint_of_other_lock_settings(tmp_path, tiny_trainer):
    _, first = tiny_trainer(tmp_path, **CHECKPOINTED)
    first.train()
    checkpoint = last_complete_checkpoint(tmp_path / "run")
    copy = tmp_path / "elsewhere"
    shutil.copytree(checkpoint.parent, copy)
    _, other = tiny_trainer(tmp_path / "other", **{**CHECKPOINTED, "weights_per_round": 9, "objective": "information"})
    with pytest.raises(ValueError, match="other lock settings.*objective.*weights_per_round"):
        other.train(resume_from_checkpoint=str(copy / checkpoint.name))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        tiny_trainer(tmp_path / "empty", **CHECKPOINTED)[1].train(resume_from_checkpoint=True)


def test_a_run_killed_after_its_last_update_resumes_to_the_same_encoder(tmp_path, tiny_trainer):
    whole_encoder, whole = tiny_trainer(tmp_path / "whole", **CHECKPOINTED)
    whole.train()
    _, killed = tiny_trainer(tmp_path / "killed", **CHECKPOINTED)
    killed.end_lock = lambda: (_ for _ in ()).throw(KeyboardInterrupt())  # Ctrl-C after the last checkpoint
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed_encoder, resumed = tiny_trainer(tmp_path / "killed", **CHECKPOINTED)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == whole.state.global_step  # no update beyond the budget
    assert resumed.best_round == whole.best_round
    for name, value in whole_encoder.state_dict().items():
        assert torch.equal(resumed_encoder.state_dict()[name], value), name


def test_a_users_files_are_never_replaced_without_the_flag_and_never_deleted(tmp_path, tiny_trainer, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        tiny_trainer(tmp_path)
    _, trainer = tiny_trainer(tmp_path, overwrite_output_dir=True)
    trainer.train()
    trainer.save_model()
    assert (run / "notes.txt").read_text() == "mine" and (run / "encoderlock_config.json").is_file()
    trainer.save_model()  # the same trainer replacing its own save needs no flag

    (run / "notes.txt").unlink()
    with pytest.raises(FileExistsError, match="already holds a finished result"):
        tiny_trainer(tmp_path)  # a finished lock from another run
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    _, careful = tiny_trainer(tmp_path / "fresh")  # no overwrite_output_dir
    with pytest.raises(FileExistsError, match="data.csv"):
        careful.save_model(str(other))
    assert (other / "data.csv").read_text() == "1,2" and not (other / "config.json").exists()

    monkeypatch.chdir(run)  # tiny_trainer(root) writes to root / "run": here, the current folder
    with pytest.raises(ValueError, match="current folder"):
        tiny_trainer(Path(".").resolve().parent, overwrite_output_dir=True)


def test_a_folder_that_cannot_be_written_fails_before_any_work(tmp_path, tiny_trainer):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot be written"):
        tiny_trainer(blocker)  # output_dir would be a-file/run: under a file, so it can never be created
    if os.geteuid() != 0:  # root may write into read-only folders, so this half only means something for users
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="cannot be written"):
                tiny_trainer(locked)
        finally:
            locked.chmod(0o700)


def test_logging_strategy_no_silences_the_round_logs(tmp_path, tiny_trainer, capsys):
    _, trainer = tiny_trainer(tmp_path, logging_strategy="no", disable_tqdm=False)
    capsys.readouterr()
    trainer.train()
    printed = capsys.readouterr()
    assert "lock/" not in printed.out + printed.err
    assert [h["round"] for h in trainer.history if "mask_size" in h] == [0, 1]  # still recorded, not printed
    assert not [entry for entry in trainer.state.log_history if any(k.startswith("lock/") for k in entry)]
