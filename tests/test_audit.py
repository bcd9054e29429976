"""``encoderlock audit``: changed weights, mask subset, config and card checks, tamper detection."""

from __future__ import annotations

import json

import pytest
import torch

from hf_encoderlock.audit import audit_locked, compare_weights, default_domains
from hf_encoderlock.encoders import tiny_vit_encoder


def test_clean_lock_passes_every_check(audit_folders):
    original, locked = audit_folders
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


def test_tampered_weights_are_caught(audit_folders):
    from hf_encoderlock.encoders import load_encoder

    original, locked = audit_folders
    encoder = load_encoder(str(locked))
    with torch.no_grad():
        encoder.backbone.get_parameter("layers.1.attention.v_proj.weight")[2, 2] += 1.0  # outside the mask
    encoder.backbone.save_pretrained(locked)
    report = audit_locked(locked, original=original, probes=False)
    assert not report.ok
    assert report.weights["changed"] == 6 and report.weights["outside_mask"] == 1
    assert any("outside the mask" in p and "v_proj" in p for p in report.problems)
    assert report.card["verified"] is False and any("sha256" in p for p in report.problems)


def test_config_and_card_disagreeing_with_the_mask(audit_folders):
    original, locked = audit_folders
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
