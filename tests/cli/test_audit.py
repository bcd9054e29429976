"""``encoderlock audit`` from the command line: exit status on a clean and a tampered lock, probes on saved domains."""

from __future__ import annotations

import json
import shutil

import torch
from datasets import DatasetDict

from hf_encoderlock.audit import MASK_FILE
from hf_encoderlock.cli.main import main
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.selection import load_mask, save_mask
from tests.helpers import build_audit_folders, toy_domain


def test_cli_no_probes_and_tamper_exit_status(audit_folders, tmp_path, capsys):
    original, locked = audit_folders
    out = tmp_path / "audit"
    assert main(["audit", str(locked), "--original", str(original), "--out", str(out), "--no-probes"]) == 0
    data = json.loads((out / "audit.json").read_text())
    assert data["ok"] and data["weights"]["changed"] == 5
    assert "Result: OK" in (out / "audit.md").read_text()
    tampered = tmp_path / "tampered"
    shutil.copytree(locked, tampered)
    (tampered / "config.json").write_text((tampered / "config.json").read_text())  # harmless
    (tampered / "model.safetensors").write_bytes((tampered / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\1")
    assert main(["audit", str(tampered), "--no-probes"]) == 1
    assert "PROBLEMS FOUND" in capsys.readouterr().out


def test_cli_with_probes_on_saved_toy_domains(tmp_path):
    """On domains saved with a user's own column names (``pic`` / ``digit``), named by the column flags."""
    red, green = tmp_path / "red", tmp_path / "green"
    own = {"image": "pic", "label": "digit"}
    red_splits = DatasetDict(train=toy_domain(30, 0, "red"), test=toy_domain(15, 1, "red"))
    red_splits.rename_columns(own).save_to_disk(str(red))
    green_splits = DatasetDict(train=toy_domain(30, 2, "green"), test=toy_domain(15, 3, "green"))
    green_splits.rename_columns(own).save_to_disk(str(green))
    original, locked = build_audit_folders(tmp_path / "lock", {"authorized": [str(red)], "prohibited": [str(green)]})
    out = tmp_path / "audit"
    status = main(
        [
            "audit",
            str(locked),
            "--original",
            str(original),
            "--domains",
            str(red),
            str(green),
            "--out",
            str(out),
            "--fractions",
            "1",
            "--seeds",
            "0",
            "--heads",
            "linear",
            "--epochs",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
            "--image-column",
            "pic",
            "--label-column",
            "digit",
        ]
    )
    assert status == 0
    data = json.loads((out / "audit.json").read_text())
    rows = {row["domain"]: row for row in data["probes"]["best"]}
    assert rows["red"]["role"] == "authorized" and rows["green"]["role"] == "prohibited"
    assert all(0.0 <= row["locked"] <= 1.0 and "random_twin" in row for row in rows.values())
    assert (out / "probe_report.json").is_file() and "## Probes" in (out / "audit.md").read_text()


# ------------------------------------------------------------------------------------------------ exit statuses
def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("encoderlock audit: error:")]
    assert len(err) == 1, err
    return err[0]


def test_cli_user_errors_exit_2_in_one_line(audit_folders, tmp_path, capsys):
    original, locked = audit_folders
    tiny_vit_encoder(0, image_size=16, patch_size=4, hidden_size=16).save_pretrained(tmp_path / "narrower")
    assert main(["audit", str(locked), "--original", str(tmp_path / "narrower"), "--no-probes"]) == 2
    assert "differ in architecture" in one_error_line(capsys)
    assert main(["audit", str(locked), "--original", str(tmp_path / "missing"), "--no-probes"]) == 2
    assert "does not exist" in one_error_line(capsys)
    (tmp_path / "mask.safetensors").write_bytes(b"\x00garbage")
    assert main(["audit", str(locked), "--mask", str(tmp_path / "mask.safetensors"), "--no-probes"]) == 2
    assert "cannot read the mask" in one_error_line(capsys)


def test_cli_failed_check_exits_1_with_the_mask_given_separately(audit_folders, tmp_path, capsys):
    original, locked = audit_folders
    kept = tmp_path / "owner-mask.safetensors"
    shutil.move(locked / MASK_FILE, kept)  # as after a pull: the owner kept the mask
    assert main(["audit", str(locked), "--original", str(original), "--mask", str(kept), "--no-probes"]) == 0
    mask = load_mask(kept)
    mask["layers.1.mlp.fc1.weight"] = torch.ones(64, 32, dtype=torch.bool)  # enlarged: 2048 entries
    save_mask(mask, kept)
    capsys.readouterr()
    assert main(["audit", str(locked), "--original", str(original), "--mask", str(kept), "--no-probes"]) == 1
    assert "PROBLEMS FOUND" in capsys.readouterr().out
