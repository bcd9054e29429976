"""``encoderlock probe`` end to end on a tiny saved encoder (in process and as a subprocess)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_encoderlock.cli import measure_options
from hf_encoderlock.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
FAST = ["--fractions", "0.5", "1", "--seeds", "0", "1", "--epochs", "3", "--threads", "1", "--quiet"]


def _check_outputs(out: Path, domains: list[str], twin: bool) -> dict:
    data = json.loads((out / "probe_report.json").read_text())
    assert list(data["domains"]) == domains
    assert set(data["best"]) == ({"encoder", "random_twin"} if twin else {"encoder"})
    assert {s["fraction"] for s in data["scores"]} == {0.5, 1.0}
    assert "## Attacker's best" in (out / "probe_report.md").read_text()
    assert (out / "probe_report.png").read_bytes()[:4] == b"\x89PNG"
    return data


def test_cli_probe_in_process(encoder_dir, domain_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["probe", "--encoder", str(encoder_dir), "--domains", str(domain_dir), "--out", str(out), *FAST]
    assert main(argv) == 0
    data = _check_outputs(out, ["colours"], twin=True)
    assert data["config"]["seeds"] == [0, 1] and data["config"]["poolings"] == ["cls", "mean"]
    printed = capsys.readouterr().out
    assert "Attacker's best" in printed and "probe_report.png" in printed


def test_cli_probe_as_subprocess(encoder_dir, domain_dir, tmp_path):
    out = tmp_path / "report"
    command = [
        sys.executable,
        "-m",
        "hf_encoderlock.cli.main",
        "probe",
        "--encoder",
        str(encoder_dir),
        "--domains",
        str(domain_dir),
        "--out",
        str(out),
        "--no-random-twin",
        "--heads",
        "linear",
        "knn",
        "--poolings",
        "cls",
        "--no-cache",
        *FAST,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    data = _check_outputs(out, ["colours"], twin=False)
    assert {s["head"] for s in data["scores"]} == {"linear", "knn"}


def test_cli_bad_domain_is_a_clear_error(encoder_dir, tmp_path, capsys):
    code = main(["probe", "--encoder", str(encoder_dir), "--domains", "mnistt", "--out", str(tmp_path), "--quiet"])
    assert code != 0
    error = capsys.readouterr().err
    assert "mnistt" in error and "Did you mean the built-in 'mnist'" in error
    assert not (tmp_path / "probe_report.json").exists()


def test_cli_bad_encoder_and_arguments(domain_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-encoder"
    missing.mkdir()
    assert main(["probe", "--encoder", str(missing), "--domains", str(domain_dir), "--out", str(tmp_path)]) != 0
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # --encoder and --victim are exclusive
        build_parser().parse_args(["probe", "--encoder", "x", "--victim", "--domains", "d", "--out", "o"])
    assert exit_info.value.code == 2


def test_cli_probe_reads_a_users_own_column_names(renamed_domain_dir, encoder_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["probe", "--encoder", str(encoder_dir), "--domains", str(renamed_domain_dir), "--out", str(out), *FAST]
    assert main(argv) == 2  # found on the user's path: there was no way to name the columns
    assert "image column 'image' not found" in capsys.readouterr().err
    assert main([*argv, "--image-column", "pic", "--label-column", "digit"]) == 0
    _check_outputs(out, ["colours"], twin=True)


def test_quiet_also_silences_transformers_progress_bars(encoder_dir, domain_dir, tmp_path, monkeypatch):
    """--quiet left transformers' "Loading weights" bars on (found on the user's path)."""
    silenced = []
    monkeypatch.setattr(measure_options.transformers_logging, "disable_progress_bar", lambda: silenced.append(True))
    argv = ["probe", "--encoder", str(encoder_dir), "--domains", str(domain_dir), "--out", str(tmp_path / "r"), *FAST]
    assert main([*argv, "--no-random-twin"]) == 0
    assert silenced == [True]


def test_cli_probe_takes_the_image_processor_of_another_folder(encoder_dir, domain_dir, tmp_path, capsys):
    """An encoder saved without preprocessor_config.json is refused with the flag to use; with it, it is probed."""
    bare = tmp_path / "bare"
    shutil.copytree(encoder_dir, bare)
    (bare / "preprocessor_config.json").unlink()
    out = tmp_path / "report"
    argv = ["probe", "--encoder", str(bare), "--domains", str(domain_dir), "--out", str(out), "--no-random-twin", *FAST]
    assert main(argv) == 2
    assert "--image_processor" in capsys.readouterr().err
    assert main([*argv, "--image-processor", str(encoder_dir)]) == 0
    _check_outputs(out, ["colours"], twin=False)
    victim = ["probe", "--victim", "--image-processor", str(encoder_dir), "--domains", str(domain_dir), "--out"]
    assert main([*victim, str(out), *FAST]) == 2
    assert "the built-in victim has its own" in capsys.readouterr().err
