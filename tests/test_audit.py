"""``encoderlock audit``: changed weights, mask subset, config and card checks, tamper detection."""

from __future__ import annotations

import json

import pytest
import torch

from hf_encoderlock.audit import MASK_FILE, AuditError, audit_locked, compare_weights, default_domains
from hf_encoderlock.encoders import load_encoder, tiny_vit_encoder
from hf_encoderlock.hub.card import write_model_card
from hf_encoderlock.lock.selection import load_mask, save_mask
from hf_encoderlock.probing.sanitize import robust_scale


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


# ------------------------------------------------------------------------------------ declared counts, budget
def set_lock(locked, budget=(1, 7), candidate_blocks=(0, 1), **mask_fields) -> None:
    """Rewrite the lock config (``budget`` = rounds x weights_per_round, candidate blocks, mask fields) and render
    the card again, as someone who controls every file but the original would."""
    path = locked / "encoderlock_config.json"
    config = json.loads(path.read_text())
    config["hyperparameters"] = {"num_rounds": budget[0], "weights_per_round": budget[1]}
    if candidate_blocks is not None:
        config["hyperparameters"]["candidate_blocks"] = list(candidate_blocks)
    config["rounds_completed"] = budget[0]
    config["mask"].update(mask_fields)
    path.write_text(json.dumps(config))
    write_model_card(locked, report=None)


def edit_weight(locked, name, index, mask_too=False) -> None:
    """Change one entry of ``name`` in the locked folder (and add it to the mask with ``mask_too``)."""
    encoder = load_encoder(str(locked))
    with torch.no_grad():
        encoder.backbone.get_parameter(name)[index] += 1.0
    encoder.backbone.save_pretrained(locked)
    if mask_too:
        mask = load_mask(locked / MASK_FILE)
        mask.setdefault(name, torch.zeros_like(encoder.backbone.get_parameter(name), dtype=torch.bool))[index] = True
        save_mask(mask, locked / MASK_FILE)


def test_declared_counts_and_budget_pass_on_a_clean_lock(audit_folders):
    original, locked = audit_folders
    set_lock(locked)
    report = audit_locked(locked, original=original, probes=False)
    assert report.ok, report.problems
    assert report.declared == {"declared_count": 7, "card_count": 7, "budget": 7, "mask_count": 7, "changed": 5,
                               "outside_candidates": []}  # fmt: skip
    (locked / MASK_FILE).unlink()  # a pulled lock: the owner kept the mask
    report = audit_locked(locked, original=original, probes=False)
    assert report.ok, report.problems


V_PROJ = "layers.1.attention.v_proj.weight"
PATCH = "embeddings.patch_embeddings.projection.weight"


def enlarged_mask(locked):
    """A tampered entry covered by a mask (and config, and card) enlarged to hold it."""
    edit_weight(locked, V_PROJ, (2, 2), mask_too=True)
    mask = load_mask(locked / MASK_FILE)
    set_lock(locked, count=8, per_layer={n: int(m.sum()) for n, m in mask.items()})


def wrong_shape_mask(locked):
    """A mask tensor that would broadcast over the whole weight."""
    mask = load_mask(locked / MASK_FILE)
    mask["layers.0.attention.q_proj.weight"] = torch.ones(1, dtype=torch.bool)
    save_mask(mask, locked / MASK_FILE)
    edit_weight(locked, "layers.0.attention.q_proj.weight", (9, 9))
    set_lock(locked, count=4 + 1, per_layer={"layers.0.attention.q_proj.weight": 1, "layers.1.mlp.fc1.weight": 4})


def above_declared(locked):
    """No mask; more entries changed than the config (and card) declare, within the budget."""
    (locked / MASK_FILE).unlink()
    set_lock(locked, count=4, per_layer={"layers.0.attention.q_proj.weight": 2, "layers.1.mlp.fc1.weight": 2})


def above_budget(locked):
    """A declared count above rounds x weights_per_round."""
    set_lock(locked, budget=(1, 4))


def outside_candidates(locked):
    """No mask; a change in the patch embedding, which candidate_blocks=[0, 1] excludes."""
    (locked / MASK_FILE).unlink()
    edit_weight(locked, PATCH, (0, 0, 0, 0))
    set_lock(locked, budget=(1, 8), count=8, per_layer={"layers.0.attention.q_proj.weight": 3,
                                                       "layers.1.mlp.fc1.weight": 4, PATCH: 1})  # fmt: skip


def undeclared_tensor(locked):
    """No mask; a change in a candidate tensor the config declares no masked weight in."""
    (locked / MASK_FILE).unlink()
    edit_weight(locked, V_PROJ, (2, 2))
    set_lock(locked, budget=(1, 8))


@pytest.mark.parametrize(
    "tamper, expected",
    [
        (enlarged_mask, ["holds 8 masked weights, more than the budget 1 rounds x 7 weights_per_round = 7"]),
        (wrong_shape_mask, ["'layers.0.attention.q_proj.weight' has shape (1,), the weight has (32, 32)",
                            "4 changed entries lie outside the mask"]),
        (above_declared, ["5 entries changed, more than the 4 masked weights encoderlock_config.json declares",
                          "5 entries changed, more than the 4 masked weights the card declares",
                          "3 entries of 'layers.0.attention.q_proj.weight' changed, encoderlock_config.json "
                          "declares 2"]),
        (above_budget, ["encoderlock_config.json declares 7 masked weights, more than the budget",
                        "the weights show 5 changed entries, more than the budget 1 rounds x 4"]),
        (outside_candidates, [f"outside the lock's candidate weights (candidate_blocks=[0, 1]): {PATCH}"]),
        (undeclared_tensor, [f"1 changed entries lie in tensors encoderlock_config.json declares no masked weight "
                             f"in ({V_PROJ})"]),
    ],
    ids=["enlarged mask", "wrong-shape mask", "above declared", "above budget", "outside candidates",
         "undeclared tensor"],
)  # fmt: skip
def test_an_audit_that_cannot_be_fooled(audit_folders, tamper, expected):
    original, locked = audit_folders
    tamper(locked)
    report = audit_locked(locked, original=original, probes=False)
    assert not report.ok
    for text in expected:
        assert any(text in p for p in report.problems), (text, report.problems)


def test_a_mask_check_without_the_original(audit_folders):
    _, locked = audit_folders
    wrong_shape_mask(locked)
    report = audit_locked(locked, probes=False)
    assert any("has shape (1,)" in p for p in report.problems) and report.weights is None


# ------------------------------------------------------------------------------------------------ user errors
def test_another_architecture_is_a_one_line_user_error(audit_folders, tmp_path):
    _, locked = audit_folders
    tiny_vit_encoder(0, image_size=16, patch_size=4, num_layers=3).save_pretrained(tmp_path / "deeper")
    with pytest.raises(AuditError, match=r"differ in architecture: 16 tensor\(s\) only in the original") as caught:
        audit_locked(locked, original=tmp_path / "deeper", probes=False)
    assert "\n" not in str(caught.value)


def test_a_changed_config_json_is_a_failed_check_not_a_user_error(audit_folders):
    original, locked = audit_folders
    config = json.loads((locked / "config.json").read_text())
    config["num_hidden_layers"] = 1  # the same weights, loaded as a shallower model
    (locked / "config.json").write_text(json.dumps(config))
    report = audit_locked(locked, original=original, probes=False)
    assert any("config.json: sha256" in p for p in report.problems)
    assert any("differ in architecture" in p for p in report.problems)


def test_missing_original_and_unreadable_mask_are_user_errors(audit_folders, tmp_path):
    _, locked = audit_folders
    with pytest.raises(AuditError, match="original encoder '/no/such/encoder' does not exist"):
        audit_locked(locked, original="/no/such/encoder", probes=False)
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AuditError, match="cannot read the mask"):
        audit_locked(locked, probes=False, mask=tmp_path / "broken.safetensors")
    with pytest.raises(AuditError, match="no mask file at"):
        audit_locked(locked, probes=False, mask=tmp_path / "none.safetensors")


# ------------------------------------------------------------------------------- what the audit could not check
def change_everything(locked) -> dict[str, int]:
    """Every entry of every tensor changed (another model), the mask deleted; returns the per-tensor counts."""
    encoder = load_encoder(str(locked))
    with torch.no_grad():
        for param in encoder.backbone.parameters():
            param.add_(1.0)
    encoder.backbone.save_pretrained(locked)
    (locked / MASK_FILE).unlink()
    return {n: p.numel() for n, p in encoder.backbone.named_parameters()}


def test_deleted_declarations_fail_the_audit(audit_folders, capsys):
    from hf_encoderlock.cli.main import main

    original, locked = audit_folders
    change_everything(locked)
    path = locked / "encoderlock_config.json"
    config = json.loads(path.read_text())
    del config["mask"], config["hyperparameters"], config["rounds_completed"]  # the budget and counts removed
    path.write_text(json.dumps(config))
    write_model_card(locked, report=None)  # the card rendered again: its hashes match
    report = audit_locked(locked, original=original, probes=False)
    assert not report.ok and report.result == "PROBLEMS FOUND"
    for what in ("mask.count", "weights_per_round", "candidate_blocks", "mask.per_layer"):
        assert any(what in p and "cannot be checked" in p for p in report.problems), (what, report.problems)
    assert main(["audit", str(locked), "--original", str(original), "--no-probes"]) == 1
    assert "Result: OK" not in capsys.readouterr().out


def test_an_enlarged_budget_does_not_pass_a_fully_changed_model(audit_folders):
    original, locked = audit_folders
    counts = change_everything(locked)
    set_lock(locked, budget=(1, 10**6), candidate_blocks=None, count=sum(counts.values()), per_layer=counts)
    config = json.loads((locked / "encoderlock_config.json").read_text())
    config["hyperparameters"]["candidate_blocks"] = None  # every block a candidate
    (locked / "encoderlock_config.json").write_text(json.dumps(config))
    write_model_card(locked, report=None)
    report = audit_locked(locked, original=original, probes=False)
    assert not report.ok
    assert any("of the encoder's entries changed" in p for p in report.problems), report.problems


def test_without_the_original_the_audit_says_what_it_could_not_check(audit_folders, capsys):
    from hf_encoderlock.cli.main import main

    _, locked = audit_folders
    change_everything(locked)
    write_model_card(locked, report=None)
    report = audit_locked(locked, probes=False)
    assert not report.ok and report.result == "INCOMPLETE"
    assert any("no original encoder given" in u for u in report.unchecked)
    assert main(["audit", str(locked), "--no-probes"]) == 1
    out = capsys.readouterr().out
    assert "Result: INCOMPLETE" in out and "not checked: which weights changed" in out


def test_tensors_the_original_checkpoint_lacks_are_named_not_blamed(audit_folders, tmp_path):
    """An original saved without its pooler: loading it initialises one at random, each time differently."""
    from safetensors.torch import load_file, save_file

    from hf_encoderlock.cli.main import main

    original, locked = audit_folders
    weights = original / "model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("pooler.")}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    (original / "preprocessor_config.json").unlink()  # --no-probes needs no image processor
    report = audit_locked(locked, original=original, probes=False)
    assert report.ok, report.problems + report.unchecked
    assert report.weights["not_in_original"] == ["pooler.dense.weight"]  # its bias starts at zero: deterministic
    assert any("not in the original checkpoint" in n for n in report.notes)
    assert main(["audit", str(locked), "--original", str(original), "--no-probes"]) == 0


def test_tell_tale_outliers_are_named_against_the_original(audit_folders):
    original, locked = audit_folders  # its 5 edits (+0.5) lie far beyond their tensors' spread
    report = audit_locked(locked, original=original, probes=False)
    assert set(report.outliers["flagged"]) == {"layers.0.attention.q_proj.weight", "layers.1.mlp.fc1.weight"}
    assert report.outliers["locked"] >= report.outliers["original"] + 5
    assert any(note.startswith("tell-tale weights: 2 tensor(s)") for note in report.notes)
    assert report.ok  # a weak lock is not a dishonest one: the integrity checks still pass
    assert "tell-tale" in report.to_markdown()


def test_edits_inside_the_tensor_range_are_not_tell_tale(audit_folders):
    original, locked = audit_folders
    encoder, source = load_encoder(str(locked)), load_encoder(str(original))
    with torch.no_grad():  # the same entries, moved by a small step instead
        for name, param in encoder.backbone.named_parameters():
            param.copy_(source.backbone.get_parameter(name))
        encoder.backbone.get_parameter("layers.0.attention.q_proj.weight")[0, 0] += 0.001
    encoder.backbone.save_pretrained(locked)
    report = audit_locked(locked, original=original, probes=False)
    assert report.outliers["flagged"] == {} and report.outliers["locked"] == report.outliers["original"]
    assert report.outliers["piled_up"]["flagged"] == {}
    assert not any("tell-tale" in note for note in report.notes)


def test_edits_clamped_onto_one_value_are_tell_tale_inside_the_range(audit_folders):
    """A bounded lock keeps each entry in range, but a clamp leaves many on the very same value."""
    original, locked = audit_folders
    encoder, source = load_encoder(str(locked)), load_encoder(str(original))
    name = "layers.0.attention.q_proj.weight"
    with torch.no_grad():
        for key, param in encoder.backbone.named_parameters():
            param.copy_(source.backbone.get_parameter(key))
        weight = encoder.backbone.get_parameter(name)
        median, scale = robust_scale(weight)
        weight[0, :8] = median + 2.5 * scale  # inside the range, but eight entries on one value
    encoder.backbone.save_pretrained(locked)
    report = audit_locked(locked, original=original, probes=False)
    assert report.outliers["flagged"] == {}  # nothing beyond 6 robust std
    assert report.outliers["piled_up"]["flagged"] == {name: [8, 0]}
    expected = "tell-tale weights: 8 entries in 1 tensor(s) (the original: 0) sit on"
    assert any(note.startswith(expected) for note in report.notes)
