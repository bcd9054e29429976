"""One output-folder rule for every writer: never the folder the encoder came from, never a user's README.md or
config.json replaced without the flag, never a user's file deleted (also in victim/, locked/, checkpoints/)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from hf_encoderlock import _utils
from hf_encoderlock._utils import exclusive_output_folder
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub.card import write_model_card
from hf_encoderlock.hub.locked import LockedEncoder
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from tests.helpers import toy_domain, toy_main_job_inputs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lock_vit.py"


def _main(words):
    spec = importlib.util.spec_from_file_location("lock_vit_example_output", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(words)


def _trainer(model, tiny_lock_config, root, **overrides):
    args = tiny_lock_config(root, **overrides)
    return EncoderLockTrainer(model, args, toy_domain(24, 0, "red"), toy_domain(24, 1, "green"), "red", "green")


@pytest.mark.parametrize("where", ["same", "parent"])
def test_the_folder_the_encoder_was_loaded_from_is_refused_even_with_the_flag(tmp_path, tiny_lock_config, where):
    root = tmp_path / "models"
    source = root / "run"  # tiny_lock_config(root) writes to root / "run"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(source)
    original = (source / "model.safetensors").read_bytes()
    if where == "parent":  # output_dir = tmp_path / "run"; the encoder lives in tmp_path / "run" / "vit"
        source = tmp_path / "run" / "vit"
        tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(source)
        root = tmp_path
    with pytest.raises(ValueError, match="the folder the encoder was loaded from"):
        _trainer(str(source), tiny_lock_config, root, overwrite_output_dir=True)
    assert (source / "model.safetensors").read_bytes() == original


def test_a_users_readme_and_config_are_not_treated_as_ours(tmp_path, tiny_lock_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "README.md").write_text("# my project\n")
    (run / "config.json").write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match=r"README.md, config.json"):
        _trainer(tiny_vit_encoder(seed=0, image_size=16, patch_size=4), tiny_lock_config, tmp_path)
    assert (run / "README.md").read_text() == "# my project\n"


def test_locked_encoder_save_pretrained_keeps_a_users_readme(locked_folder, tmp_path):
    write_model_card(locked_folder)
    locked = LockedEncoder.from_pretrained(locked_folder)
    target = tmp_path / "copy"
    target.mkdir()
    (target / "README.md").write_text("# my notes\n")
    with pytest.raises(FileExistsError, match="README.md"):
        locked.save_pretrained(target)
    assert (target / "README.md").read_text() == "# my notes\n"
    again = tmp_path / "again"
    locked.save_pretrained(again)
    locked.save_pretrained(again)  # replacing its own copy is fine
    assert LockedEncoder.from_pretrained(again).authorization.prohibited


@pytest.mark.slow
def test_the_main_job_never_deletes_a_users_files(tmp_path):
    model_dir, words = toy_main_job_inputs(tmp_path)
    out = tmp_path / "out"
    words += ["--num_rounds", "1", "--update_steps_per_round", "1", "--weights_per_round", "5"]
    words += ["--per_device_train_batch_size", "8", "--adversary_epochs", "1", "--adversary_seeds", "1"]
    words += ["--probe_seeds", "0", "--probe_fractions", "1.0", "--use_cpu", "true", "--disable_tqdm", "true"]
    with pytest.raises(ValueError, match="the folder the encoder was loaded from"):
        _main([*words, "--output_dir", str(model_dir), "--overwrite_output_dir", "true"])

    mine = {"victim/my_notes.txt": "v", "locked/my_notes.txt": "l", "checkpoints/my_model.pt": "c"}
    for name, text in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    with pytest.raises(FileExistsError, match="victim/my_notes.txt"):
        _main([*words, "--output_dir", str(out)])
    _main([*words, "--output_dir", str(out), "--overwrite_output_dir", "true"])
    assert (out / "report.json").is_file() and (out / "locked" / "encoderlock_config.json").is_file()
    assert {name: (out / name).read_text() for name in mine} == mine
    assert not list((out / "checkpoints").glob("checkpoint-*"))  # its own checkpoints are removed


def test_a_second_main_job_on_a_busy_output_folder_is_refused_and_the_first_keeps_its_files(tmp_path):
    model_dir, words = toy_main_job_inputs(tmp_path)
    out = tmp_path / "out"
    running = tmp_path / ".out.partial-running"  # the staging folder the first run is writing into
    (running / "victim").mkdir(parents=True)
    (running / "victim" / "config.json").write_text("{}")
    with exclusive_output_folder(out, "the first run"):
        with pytest.raises(FileExistsError, match=r"another run is writing output_dir .*out"):
            _main([*words, "--output_dir", str(out), "--overwrite_output_dir", "true"])
        assert (running / "victim" / "config.json").is_file()  # not taken for an interrupted run's leftover
    assert not list(tmp_path.glob(".out.lock*"))  # nothing left beside the folder once the run is over
    with exclusive_output_folder(out, "the next run"):  # free again
        pass


def test_a_killed_runs_hold_on_the_output_folder_goes_with_it(tmp_path):
    out = tmp_path / "out"
    hold = "import sys\nfrom hf_encoderlock._utils import exclusive_output_folder\n"
    hold += "with exclusive_output_folder(sys.argv[1], 'a run'):\n    print('held', flush=True)\n    sys.stdin.read()\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(FileExistsError, match="another run is writing"), exclusive_output_folder(out, "the next"):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with exclusive_output_folder(out, "the next run"):  # the lock file it left is taken over
        assert list(tmp_path.glob(".out.lock"))


def test_an_output_folder_whose_hold_file_cannot_be_made_is_named_unwritable(tmp_path, monkeypatch):
    """Not "another run is writing": under /proc the hold file is silently never made, under /sys making it fails."""

    class NeverMade(FileLock):
        def acquire(self, timeout=None, **kwargs):
            raise Timeout(self.lock_file)

    class Refused(FileLock):
        def acquire(self, timeout=None, **kwargs):
            raise PermissionError(13, "Permission denied")

    for lock_class, reason in ((NeverMade, ""), (Refused, ": Permission denied")):
        monkeypatch.setattr(_utils, "FileLock", lock_class)
        with pytest.raises(PermissionError) as caught:
            with exclusive_output_folder(tmp_path / "out", "the main job"):
                pass
        assert str(caught.value) == (
            f"the main job: output_dir {tmp_path / 'out'} cannot be written (its hold file {tmp_path / '.out.lock'} "
            f"cannot be created){reason}"
        )
