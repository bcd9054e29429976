"""examples/lock_vit.py end to end on a tiny ViT and tiny saved domains (offline, CPU)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetDict
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from hf_encoderlock.data.errors import DomainError
from hf_encoderlock.encoders import EncoderError, tiny_vit_encoder
from hf_encoderlock.experiment import LockExperimentArguments
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from tests.helpers import toy_domain, toy_main_job_inputs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lock_vit.py"


def _example_module():
    spec = importlib.util.spec_from_file_location("lock_vit_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_vit_example_writes_loadable_folders_and_honest_report(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(model_dir)
    for name, style, seed in (("red", "red", 0), ("green", "green", 1)):
        DatasetDict({"train": toy_domain(90, seed, style), "test": toy_domain(30, seed + 10, style)}).save_to_disk(
            tmp_path / name
        )
    out = tmp_path / "out"
    _example_module().main(
        [
            "--model",
            str(model_dir),
            "--authorized",
            str(tmp_path / "red"),
            "--prohibited",
            str(tmp_path / "green"),
            "--output_dir",
            str(out),
            "--num_rounds",
            "2",
            "--update_steps_per_round",
            "2",
            "--weights_per_round",
            "10",
            "--per_device_train_batch_size",
            "8",
            "--score_batches",
            "1",
            "--adversary_epochs",
            "2",
            "--adversary_seeds",
            "1",
            "--adversary_kinds",
            "linear",
            "--probe_seeds",
            "0",
            "--probe_fractions",
            "0.5",
            "1.0",
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
        ]
    )
    assert {p.name for p in out.iterdir()} >= {"victim", "locked", "report.json", "report.md", "probe.png"}
    assert not list(tmp_path.glob(".out.partial-*"))
    for folder in ("victim", "locked"):
        assert AutoModel.from_pretrained(out / folder) is not None
        assert AutoImageProcessor.from_pretrained(out / folder) is not None
    assert str(tmp_path) not in (out / "report.json").read_text()  # no local path: the card's privacy rule
    report = json.loads((out / "report.json").read_text())
    assert report["experiment"]["model"] == "tiny" and report["experiment"]["prohibited"] == "green"
    rows = {row["domain"]: row for row in report["table"]}
    assert set(rows) == {"red", "green"}
    assert rows["green"]["role"] == "prohibited" and rows["red"]["role"] == "authorized"
    for row in rows.values():
        for key in ("random_twin", "victim", "locked", "lock_own_head"):
            assert 0.0 <= row[key] <= 1.0
    assert "advantage_removed" in rows["green"] and "advantage_kept" in rows["red"]
    assert report["lock"]["mask"]["count"] > 0
    assert "green" in report["verdict"]
    assert report["verdict"]["red"].startswith(("authorized use", "not measurable"))  # the authorized side is judged
    assert "Lock's own head (stale)" in (out / "report.md").read_text()
    # the adaptive attacker ran on the prohibited domain; its worst case is in the table, report and card
    worst = report["adaptive"]["worst_case"][0]
    assert worst["domain"] == "green" and 0.0 <= worst["worst_accuracy"] <= 1.0
    assert worst["worst_accuracy"] >= worst["fresh_probe"]  # fresh probes are one of the attacks
    assert rows["green"]["adaptive_worst"] == worst["worst_accuracy"]
    assert "An attacker who knows the method" in (out / "report.md").read_text()
    assert "Worst case of an attacker who knows the method" in (out / "locked" / "README.md").read_text()


def test_an_interrupted_main_job_keeps_its_checkpoints_and_resumes(tmp_path, monkeypatch):
    model_dir, words = toy_main_job_inputs(tmp_path)
    out = tmp_path / "out"
    words += ["--output_dir", str(out), "--num_rounds", "2", "--update_steps_per_round", "2", "--weights_per_round"]
    words += ["10", "--per_device_train_batch_size", "8", "--adversary_epochs", "2", "--adversary_seeds", "1"]
    words += ["--probe_seeds", "0", "--probe_fractions", "1.0", "--use_cpu", "true"]
    words += ["--disable_tqdm", "true", "--save_strategy", "steps", "--save_steps", "1", "--repair_steps", "1"]

    def killed(self):
        raise KeyboardInterrupt  # Ctrl-C after the last update: the checkpoints are on disk, the report is not

    with monkeypatch.context() as patch:
        patch.setattr(EncoderLockTrainer, "end_lock", killed)
        with pytest.raises(KeyboardInterrupt):
            _example_module().main(words)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing that looks like a finished run
    steps = sorted(int(p.name.removeprefix("checkpoint-")) for p in (out / "checkpoints").iterdir())
    assert steps[-1] == 2 * 2 + 1  # the rounds' steps and the repair step
    (tmp_path / ".out.partial-left-by-a-kill").mkdir()  # as a kill during publishing would leave it

    _example_module().main([*words, "--resume_from_checkpoint", "true"])
    assert {"victim", "locked", "report.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoints").exists() and not list(tmp_path.glob(".out.*"))
    report = json.loads((out / "report.json").read_text())
    assert report["lock"]["mask"]["count"] == 20  # two rounds of 10, the second restored from the checkpoint


def test_an_interrupted_main_job_without_checkpoints_leaves_no_empty_checkpoints_folder(tmp_path, monkeypatch):
    """Without a save_strategy the Trainer still made checkpoints/, and a Ctrl-C left it empty (found on the user's
    path): it suggested a run to resume. An empty one left by a killed run goes at the next start."""
    model_dir, words = toy_main_job_inputs(tmp_path)
    out = tmp_path / "out"
    words += ["--output_dir", str(out), "--num_rounds", "1", "--update_steps_per_round", "1", "--weights_per_round"]
    words += ["10", "--per_device_train_batch_size", "8", "--adversary_epochs", "1", "--adversary_seeds", "1"]
    words += ["--probe_seeds", "0", "--probe_fractions", "1.0", "--use_cpu", "true", "--disable_tqdm", "true"]
    words += ["--adaptive_attacks", "false"]

    def killed(self):
        assert (out / "checkpoints").is_dir()  # what the Trainer made
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(EncoderLockTrainer, "end_lock", killed)
        with pytest.raises(KeyboardInterrupt):
            _example_module().main(words)
    assert not out.exists() or list(out.iterdir()) == []

    (out / "checkpoints").mkdir(parents=True)  # as a killed run (SIGTERM: no cleanup) leaves it
    with monkeypatch.context() as patch:
        patch.setattr(EncoderLockTrainer, "end_lock", killed)
        with pytest.raises(KeyboardInterrupt):
            _example_module().main(words)  # it starts: the empty folder is not taken for a user's file either
    assert not out.exists() or list(out.iterdir()) == []


def test_a_model_saved_without_an_image_processor_is_locked_with_the_one_named(tmp_path):
    """--image_processor gives a --model saved without one its processor: the victim and locked folders keep it, and
    the report names a local folder by its last component only."""
    model_dir, words = toy_main_job_inputs(tmp_path)
    donor = tmp_path / "base-model"
    donor.mkdir()
    (model_dir / "preprocessor_config.json").rename(donor / "preprocessor_config.json")
    out = tmp_path / "out"
    words += ["--output_dir", str(out), "--num_rounds", "1", "--update_steps_per_round", "1", "--weights_per_round"]
    words += ["10", "--per_device_train_batch_size", "8", "--adversary_epochs", "1", "--adversary_seeds", "1"]
    words += ["--probe_seeds", "0", "--probe_fractions", "1.0", "--use_cpu", "true", "--disable_tqdm", "true"]
    words += ["--adaptive_attacks", "false", "--repair_steps", "0"]
    with pytest.raises(EncoderError, match="--image_processor"):
        _example_module().main(words)
    _example_module().main([*words, "--image_processor", str(donor)])
    for folder in ("victim", "locked"):
        assert AutoImageProcessor.from_pretrained(out / folder) is not None
    report = json.loads((out / "report.json").read_text())
    assert report["experiment"]["image_processor"] == "base-model" and str(tmp_path) not in json.dumps(report)
    with pytest.raises(ValueError, match="the built-in victim has its own"):
        LockExperimentArguments(image_processor=str(donor))


def test_unlabelled_prohibited_images_for_the_unsupervised_main_job_are_refused_with_the_reason(tmp_path):
    """A folder of images without class sub-folders failed with "no class subfolders", though the docs say the
    unsupervised variant needs images only (found on the user's path): the message says why the main job needs
    labels and where images alone are enough."""
    model_dir, words = toy_main_job_inputs(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for index in range(4):
        Image.new("RGB", (16, 16), (index * 60, 0, 0)).save(flat / f"{index}.png")
    words[words.index("--prohibited") + 1] = str(flat)
    expected = r"no class subfolders.*needs its labels.*never reads them.*EncoderLockTrainer"
    with pytest.raises(DomainError, match=expected):
        _example_module().main([*words, "--variant", "unsupervised", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_example_run_as_a_script_names_bad_input_in_one_line(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "report.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--output_dir", str(finished)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "encoderlock lock: error: the main job: output_dir" in result.stderr and "report.json" in result.stderr
    assert (finished / "report.json").read_text() == "{}"
