"""``encoderlock attack`` end to end on a tiny saved encoder: the fine-tuning attack report."""

import json

from hf_encoderlock.cli.main import main


def test_cli_attack_writes_the_fine_tuning_report(encoder_dir, domain_dir, tmp_path, capsys):
    out = tmp_path / "attack"
    code = main(
        [
            "attack",
            "--encoder",
            str(encoder_dir),
            "--domains",
            str(domain_dir),
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
