"""``encoderlock attack`` end to end on a tiny saved encoder: the fine-tuning attack report."""

import json

import pytest

from hf_encoderlock.cli.main import main


def test_cli_attack_writes_the_fine_tuning_report(encoder_dir, renamed_domain_dir, tmp_path, capsys):
    """On a domain with a user's own column names (``pic`` / ``digit``), named by the column flags."""
    out = tmp_path / "attack"
    code = main(
        [
            "attack",
            "--encoder",
            str(encoder_dir),
            "--domains",
            str(renamed_domain_dir),
            "--image-column",
            "pic",
            "--label-column",
            "digit",
            "--prohibited",
            "colours",
            "--out",
            str(out),
            "--attacks",
            "lora",
            "--fractions",
            "1",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads((out / "attack_report.json").read_text())
    assert {score["attack"] for score in data["scores"]} == {"lora", "scratch"}
    assert all(0.0 <= acc <= 1.0 for score in data["scores"] for acc in score["test_accuracy"])
    assert (out / "attack_report.png").read_bytes()[:4] == b"\x89PNG"
    assert "lora" in capsys.readouterr().out


def test_cli_attack_suite_probe_writes_the_adaptive_report(encoder_dir, domain_dir, tmp_path, capsys):
    out = tmp_path / "adaptive"
    code = main(
        ["attack", "--suite", "probe", "--encoder", str(encoder_dir), "--victim", str(encoder_dir),
         "--domains", str(domain_dir), "--authorized", str(domain_dir), "--out", str(out), "--seeds", "0",
         "--threads", "1", "--quiet"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "adaptive_report.json").read_text())
    families = {o["family"] for o in data["outcomes"]}
    assert families == {"fresh_probe", "sanitize", "transform", "sanitize+transform"}
    # the encoder is its own victim here: whatever the attacks reach, nothing of the advantage was removed by a lock
    worst = data["worst_case"][0]
    assert worst["worst_accuracy"] >= worst["fresh_probe"]
    assert "Worst case" in capsys.readouterr().out


def test_cli_attack_rejects_an_unknown_suite(encoder_dir, domain_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "attack",
                "--suite",
                "all",
                "--encoder",
                str(encoder_dir),
                "--domains",
                str(domain_dir),
                "--out",
                str(tmp_path),
            ]
        )
    assert exited.value.code == 2
    assert "invalid choice: 'all'" in capsys.readouterr().err


def test_cli_attack_roles_given_as_paths_find_their_domains_and_unknown_roles_are_refused(
    encoder_dir, domain_dir, tmp_path, capsys
):
    common = ["attack", "--encoder", str(encoder_dir), "--domains", str(domain_dir), "--attacks", "lora",
              "--fractions", "1", "--seeds", "0", "--epochs", "1", "--threads", "1", "--quiet",
              "--no-scratch"]  # fmt: skip
    out = tmp_path / "by_path"
    assert main([*common, "--authorized", str(domain_dir), "--out", str(out)]) == 0
    data = json.loads((out / "attack_report.json").read_text())
    assert [d["role"] for d in data["domains"].values()] == ["authorized"]
    capsys.readouterr()
    assert main([*common, "--prohibited", "not-a-domain-here", "--out", str(tmp_path / "unknown")]) == 2
    assert "--prohibited 'not-a-domain-here' is not one of --domains" in capsys.readouterr().err
    assert not (tmp_path / "unknown").exists()
