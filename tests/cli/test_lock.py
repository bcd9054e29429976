"""``encoderlock lock``, ``encoderlock env`` and ``encoderlock --version``: the main job for a pip user."""

import json
import subprocess
import sys
import time

import pytest
from datasets import DatasetDict

from hf_encoderlock import __version__
from hf_encoderlock.cli.lock import HELP_GROUPS, TRAINER_HEADING, parse_lock_args
from hf_encoderlock.cli.main import build_parser, main
from hf_encoderlock.encoders import tiny_vit_encoder
from tests.helpers import toy_domain


def test_version_and_env(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and __version__ in capsys.readouterr().out
    assert main(["env"]) == 0
    report = capsys.readouterr().out
    for fact in ("hf_encoderlock version", "torch version", "CUDA available", "hf_encoderlock cache", "HF_HUB_OFFLINE"):
        assert fact in report


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys, time; t = time.perf_counter(); from hf_encoderlock.cli.main import build_parser; "
    code += "build_parser(only=''); print('torch' in sys.modules, time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hf_encoderlock.cli.main", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "lock" in done.stdout and time.perf_counter() - started < 10


def test_lock_help_lists_the_main_jobs_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["lock", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "--num_rounds" in out and "--authorized" in out


def test_lock_help_lists_the_lock_flags_by_group_and_the_trainer_flags_last(capsys):
    with pytest.raises(SystemExit):
        main(["lock", "--help"])
    short = capsys.readouterr().out
    titles = [*HELP_GROUPS, TRAINER_HEADING]
    starts = [short.index(f"\n{title}:") for title in titles]
    assert starts == sorted(starts)  # data, lock, objective, challenge, measurement, publishing, then the Trainer
    assert short.index("--authorized") < short.index("--num_rounds") < short.index("--info_ridge")
    assert short.index("--info_ridge") < short.index("--hub_gated") < short.index(TRAINER_HEADING)
    assert "--gradient_accumulation_steps" not in short and "--help-all" in short
    with pytest.raises(SystemExit) as exited:
        main(["lock", "--help-all"])
    full = capsys.readouterr().out
    assert exited.value.code == 0
    assert full.index(TRAINER_HEADING) < full.index("--gradient_accumulation_steps")
    assert full.index("--num_rounds") < full.index(TRAINER_HEADING)


def test_lock_help_states_defaults_once_and_truthfully(capsys):
    with pytest.raises(SystemExit):
        main(["lock", "--help"])
    flags = " ".join(capsys.readouterr().out.split())  # the text unwrapped
    assert "Turn --adaptive_attacks off." in flags  # not the copied "(default: False)" of --no_adaptive_attacks
    assert "(default: every other built-in domain with the built-in victim; none with --model)." in flags
    assert "--model MODEL Encoder to lock: a Hub id or a folder (default: the built-in offline victim ViT). --" in flags
    experiment, _ = parse_lock_args(["--model", "folder"])
    assert experiment.other_domains() == []  # what the help says --model does to the further domains
    assert parse_lock_args([])[0].other_domains()


def test_a_bad_flag_value_prints_one_usage_line_and_the_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["lock", "--num_rounds", "abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 2
    assert err[0].startswith("usage: encoderlock lock") and "invalid int value: 'abc'" in err[1]


def test_a_bad_config_file_is_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("num_round: 3\n")
    assert main(["lock", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_round" in err and "Traceback" not in err


def test_lock_runs_the_main_job(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(model_dir)
    for name, style, seed in (("red", "red", 0), ("green", "green", 1)):
        splits = {"train": toy_domain(60, seed, style), "test": toy_domain(20, seed + 10, style)}
        DatasetDict(splits).save_to_disk(tmp_path / name)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "num_rounds: 1\nupdate_steps_per_round: 2\nweights_per_round: 10\nper_device_train_batch_size: 8\n"
        "adversary_epochs: 2\nadversary_seeds: 1\nadversary_kinds: [linear]\nprobe_seeds: [0]\n"
        "probe_fractions: [1.0]\nreport_domains: []\nuse_cpu: true\ndisable_tqdm: true\n"
    )
    words = ["lock", "--config", str(config), "--model", str(model_dir), "--output_dir", str(tmp_path / "out")]
    words += ["--authorized", str(tmp_path / "red"), "--prohibited", str(tmp_path / "green")]
    assert main(words) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["lock"]["mask"]["count"] == 10  # the flag-free file values reached the lock
    assert "outputs in" in capsys.readouterr().out


def test_every_sub_command_takes_both_flag_styles():
    parser = build_parser()
    kebab = parser.parse_args(["attack", "--encoder", "e", "--domains", "d", "--out", "o", "--max-train", "5"])
    snake = parser.parse_args(["attack", "--encoder", "e", "--domains", "d", "--out", "o", "--max_train", "5"])
    assert kebab.max_train == snake.max_train == 5


def test_a_number_field_that_may_be_none_takes_none_on_the_command_line(tmp_path):
    _, config = parse_lock_args(
        ["--authorized_projection", "none", "--challenge-max-images", "NULL", "--output_dir", str(tmp_path)]
    )
    assert config.authorized_projection is None and config.challenge_max_images is None
    _, config = parse_lock_args(["--authorized_projection", "0.5", "--output_dir", str(tmp_path)])
    assert config.authorized_projection == 0.5
    with pytest.raises(ValueError, match="authorized_projection must be 'auto', None or a number"):
        parse_lock_args(["--authorized_projection", "off", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):  # a field that may not be None refuses it
        parse_lock_args(["--learning_rate", "none", "--output_dir", str(tmp_path)])
