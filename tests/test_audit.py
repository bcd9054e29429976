"""``encoderlock audit``: changed weights, mask subset, config and card checks, probes, tamper detection."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from datasets import DatasetDict

from hf_encoderlock.audit import MASK_FILE, audit_locked, compare_weights, default_domains
from hf_encoderlock.cli.main import main
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub.card import write_model_card
from hf_encoderlock.lock.selection import save_mask

from .helpers import toy_domain

EDITED = {"layers.0.attention.q_proj.weight": [(0, 0), (1, 2), (3, 4)], "layers.1.mlp.fc1.weight": [(5, 6), (7, 8)]}


def _build(root, domain_paths=None):
    """``orig/`` (a saved tiny encoder) and ``locked/``: 5 entries edited, a 7-entry mask, config and card."""
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    encoder.save_pretrained(root / "orig")
    locked = copy.deepcopy(encoder)
    params = dict(locked.backbone.named_parameters())
    mask = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in params.items() if name in EDITED}
    with torch.no_grad():
        for name, entries in EDITED.items():
            for i, j in entries:
                params[name][i, j] += 0.5
                mask[name][i, j] = True
        mask["layers.1.mlp.fc1.weight"][0, 0] = mask["layers.1.mlp.fc1.weight"][0, 1] = True  # selected, unchanged
    locked.save_pretrained(root / "locked")
    save_mask(mask, root / "locked" / MASK_FILE)
    paths = domain_paths or {"authorized": ["red"], "prohibited": ["green"]}
    config = {
        "format": "encoderlock/v1",
        "variant": "supervised",
        "objective": "paper",
        **paths,
        "mask": {"count": 7, "per_layer": {n: int(m.sum()) for n, m in mask.items()}},
    }
    (root / "locked" / "encoderlock_config.json").write_text(json.dumps(config))
    write_model_card(root / "locked", report=None)
    return root / "orig", root / "locked"


@pytest.fixture()
def folders(tmp_path):
    return _build(tmp_path)


def test_clean_lock_passes_every_check(folders):
    original, locked = folders
    report = audit_locked(locked, original=original, probes=False)
    assert report.ok, report.problems
    assert report.weights["changed"] == 5 and report.weights["outside_mask"] == 0
    assert report.weights["subset_of_mask"] is True
    assert report.weights["per_layer"] == {
        "layers.0.attention.q_proj.weight": {"changed": 3, "size": 32 * 32, "outside_mask": 0},
        "layers.1.mlp.fc1.weight": {"changed": 2, "size": 64 * 32, "outside_mask": 0},
    }
    total = sum(p.numel() for p in tiny_vit_encoder(0, image_size=16, patch_size=4).backbone.state_dict().values())
    assert report.weights["total"] == total and report.weights["fraction"] == pytest.approx(5 / total)
    assert report.mask == {"count": 7, "layers": 2}
    assert report.config["matches_mask"] and report.card["verified"]


def test_tampered_weights_are_caught(folders):
    from hf_encoderlock.encoders import load_encoder

    original, locked = folders
    encoder = load_encoder(str(locked))
    with torch.no_grad():
        encoder.backbone.get_parameter("layers.1.attention.v_proj.weight")[2, 2] += 1.0  # outside the mask
    encoder.backbone.save_pretrained(locked)
    report = audit_locked(locked, original=original, probes=False)
    assert not report.ok
    assert report.weights["changed"] == 6 and report.weights["outside_mask"] == 1
    assert any("outside the mask" in p and "v_proj" in p for p in report.problems)
    assert report.card["verified"] is False and any("sha256" in p for p in report.problems)


def test_config_and_card_disagreeing_with_the_mask(folders):
    original, locked = folders
    path = locked / "encoderlock_config.json"
    config = json.loads(path.read_text())
    config["mask"]["count"] = 6
    path.write_text(json.dumps(config))
    report = audit_locked(locked, original=original, probes=False)
    assert any("declares 6 masked weights" in p for p in report.problems)
    (locked / "README.md").unlink()
    report = audit_locked(locked, probes=False)
    assert report.weights is None and any("model card" in p for p in report.problems)


def test_compare_weights_without_mask_and_missing_tensors():
    before = {"a": torch.zeros(3), "b": torch.ones(2)}
    after = {"a": torch.tensor([0.0, -0.0, 1.0]), "c": torch.ones(2)}  # -0.0 counts: bitwise
    summary, problems = compare_weights(before, after, None)
    assert summary["changed"] == 2 and "outside_mask" not in summary
    assert any("'b' missing" in p for p in problems) and any("'c' not in the original" in p for p in problems)


def test_default_domains_keep_builtin_names_only():
    config = {"authorized": ["mnist", "/some/folder"], "prohibited": [{"name": "SYN_DIGITS"}]}
    authorized, prohibited = default_domains(config)
    assert authorized == ["mnist"] and prohibited and prohibited[0].replace("_", "-") == prohibited[0]


def test_cli_no_probes_and_tamper_exit_status(folders, tmp_path, capsys):
    original, locked = folders
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
    red, green = tmp_path / "red", tmp_path / "green"
    DatasetDict(train=toy_domain(30, 0, "red"), test=toy_domain(15, 1, "red")).save_to_disk(str(red))
    DatasetDict(train=toy_domain(30, 2, "green"), test=toy_domain(15, 3, "green")).save_to_disk(str(green))
    original, locked = _build(tmp_path / "lock", {"authorized": [str(red)], "prohibited": [str(green)]})
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
        ]
    )
    assert status == 0
    data = json.loads((out / "audit.json").read_text())
    rows = {row["domain"]: row for row in data["probes"]["best"]}
    assert rows["red"]["role"] == "authorized" and rows["green"]["role"] == "prohibited"
    assert all(0.0 <= row["locked"] <= 1.0 and "random_twin" in row for row in rows.values())
    assert (out / "probe_report.json").is_file() and "## Probes" in (out / "audit.md").read_text()
