"""Main-job settings a lock cannot honour are refused before any work (the "before" probes included), exit 2."""

from __future__ import annotations

import importlib.util

import pytest
from datasets import DatasetDict

from hf_encoderlock import experiment
from hf_encoderlock.cli.main import main
from hf_encoderlock.encoders import tiny_vit_encoder
from tests.helpers import toy_domain


@pytest.mark.parametrize(
    "setting, message",
    [
        (["--fsdp", "full_shard"], "does not support FSDP"),
        (["--load_best_model_at_end", "true", "--eval_strategy", "steps", "--save_strategy", "steps"],
         "load_best_model_at_end is not used by a lock"),
        # found on the user's path: these three were refused only after the "before" probes
        (["--resume_from_checkpoint", "true"], "resume_from_checkpoint=True: no complete checkpoint in"),
        pytest.param(
            ["--report_to", "tensorboard"],
            "report_to=['tensorboard']: TensorBoardCallback requires tensorboard",
            marks=pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="it is installed"),
        ),
        (["--push_to_hub", "true", "--hub_model_id", "me/x"], "push_to_hub=True needs the Hub, but offline mode is on"),
    ],
    ids=["fsdp", "load_best_model_at_end", "resume-without-checkpoint", "report-to-missing-package", "push-offline"],
)  # fmt: skip
def test_unsupported_settings_are_refused_before_the_probes(tmp_path, monkeypatch, capsys, setting, message):
    model_dir = tmp_path / "tiny"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(model_dir)
    for name, style, seed in (("red", "red", 0), ("green", "green", 1)):
        DatasetDict({"train": toy_domain(30, seed, style), "test": toy_domain(9, seed + 10, style)}).save_to_disk(
            tmp_path / name
        )
    probed = []
    monkeypatch.setattr(experiment, "run_probe_suite", lambda *args, **kwargs: probed.append(args))
    words = ["lock", "--model", str(model_dir), "--authorized", str(tmp_path / "red"), "--prohibited"]
    words += [str(tmp_path / "green"), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", *setting]
    capsys.readouterr()  # the set-up's progress bars
    assert main(words) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert probed == [] and not (tmp_path / "out").exists()
