"""Push and verified pull (through a local Hub-compatible HTTP server), and local tamper detection."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import GatedRepoError
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from hf_encoderlock._files import CARD_FILE
from hf_encoderlock.cli.main import main as cli_main
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub.authorization import METADATA_KEY, LockVerificationError
from hf_encoderlock.hub.card import write_model_card
from hf_encoderlock.hub.manifest import sha256_file
from hf_encoderlock.hub.push import load_locked, push_locked_to_hub
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, EncoderLockTrainer
from tests.helpers import card_report, front_matter, toy_domain
from tests.hub_server import TOKEN

OFFLINE_AT_IMPORT = (constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_ENDPOINT"))


# ---------------------------------------------------------------------------------------- verified loading
def test_load_locked_detects_tampering_locally(locked_folder):
    write_model_card(locked_folder, report=card_report())
    encoder, processor, authorization = load_locked(locked_folder)
    assert authorization.prohibited == ("green",) and processor is encoder.image_processor

    weights = locked_folder / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3  # a plausible "unlocking" edit
    from safetensors.torch import save_file

    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(LockVerificationError, match="model.safetensors: sha256"):
        load_locked(locked_folder)

    weights.write_bytes(original)
    (locked_folder / "pytorch_model.bin").write_bytes(b"smuggled")
    with pytest.raises(LockVerificationError, match="pytorch_model.bin: not declared"):
        load_locked(locked_folder)
    (locked_folder / "pytorch_model.bin").unlink()

    card = locked_folder / CARD_FILE
    text = card.read_text()
    card.write_text(text.replace(f"{METADATA_KEY}:", "other_block:", 1))
    with pytest.raises(LockVerificationError, match="no 'encoderlock:' block"):
        load_locked(locked_folder)
    card.unlink()
    with pytest.raises(LockVerificationError, match="no model card"):
        load_locked(locked_folder)


def test_push_refuses_a_folder_that_is_not_locked(tmp_path):
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match=LOCK_CONFIG_FILE):
        push_locked_to_hub(tmp_path / "plain", "user/plain", token=TOKEN)


def test_push_refuses_a_checkpoint_of_a_lock_in_progress(locked_folder, fake_hub, capsys):
    """`encoderlock push OUT/checkpoint-6 ...` published a half-done lock as a lock (found on the user's path)."""
    (locked_folder / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="is a checkpoint of a lock in progress"):
        push_locked_to_hub(locked_folder, "user/half-done", token=TOKEN)
    assert cli_main(["push", str(locked_folder), "user/half-done", "--token", TOKEN]) == 2
    assert "push the finished lock" in capsys.readouterr().err
    assert "user/half-done" not in fake_hub.repos


# ------------------------------------------------------------------------------------ push and pull (HTTP)
def test_push_then_verified_pull_over_http(locked_folder, fake_hub, tmp_path):
    (locked_folder.parent / "report.json").write_text(json.dumps(card_report()))
    info = push_locked_to_hub(locked_folder, "user/locked", gated=True, token=TOKEN, commit_message="lock v1")
    assert info.oid == fake_hub.repos["user/locked"].commits[-1][0]

    calls = [(method, path) for method, path in fake_hub.requests if "agent-harnesses" not in path]
    assert calls == [
        ("POST", "/api/repos/create"),
        ("PUT", "/api/models/user/locked/settings"),  # gated before any file is uploaded
        ("POST", "/api/validate-yaml"),
        ("POST", "/api/models/user/locked/preupload/main"),
        ("POST", "/api/models/user/locked/commit/main"),
    ]
    repo = fake_hub.repos["user/locked"]
    assert repo.gated == "auto" and not repo.private
    files = repo.commits[-1][1]
    assert set(files) == {CARD_FILE, "config.json", "model.safetensors", "preprocessor_config.json", LOCK_CONFIG_FILE}
    assert files["model.safetensors"] == (locked_folder / "model.safetensors").read_bytes()
    remote_card = files[CARD_FILE].decode()
    assert "extra_gated_fields" in remote_card and 'load_locked("user/locked")' in remote_card
    assert "\n# user/locked (locked with EncoderLock)\n" in remote_card  # the title: the repository, not a folder
    assert "green" in remote_card.split("---")[1]  # accuracies from the report found next to the folder

    with pytest.raises(GatedRepoError):  # the gate holds without credentials
        load_locked("user/locked")

    fake_hub.requests.clear()
    encoder, processor, authorization = load_locked("user/locked", token=TOKEN)
    served = {(method, path) for method, path in fake_hub.requests}
    commit = repo.commits[-1][0]
    assert ("GET", "/api/models/user/locked/revision/main") in served
    assert ("GET", f"/api/models/user/locked/tree/{commit}") in served
    for name in (CARD_FILE, "model.safetensors", "config.json"):
        assert ("GET", f"/user/locked/resolve/{commit}/{name}") in served
    assert authorization.prohibited == ("green",) and authorization.accuracy["green"]["locked"] == pytest.approx(0.36)
    assert any((tmp_path / "hub-cache").glob("models--user--locked/snapshots/*/model.safetensors"))

    model = AutoModel.from_pretrained("user/locked", token=TOKEN)  # plain transformers, same server
    assert AutoImageProcessor.from_pretrained("user/locked", token=TOKEN) is not None
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, encoder.backbone.state_dict()[name])

    tensors = load_file(str(locked_folder / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = torch.zeros_like(tensors[name])
    from safetensors.torch import save as save_bytes

    tampered = dict(files, **{"model.safetensors": save_bytes(tensors, metadata={"format": "pt"})})
    repo.commits.append(("f" * 40, tampered))  # someone replaced the weights but not the card
    with pytest.raises(LockVerificationError, match="does not match"):
        load_locked("user/locked", token=TOKEN)


def test_trainer_save_writes_card_and_push_to_hub(tmp_path, fake_hub, tiny_lock_config):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = tiny_lock_config(
        preset={}, num_rounds=1, update_steps_per_round=1, weights_per_round=5, per_device_train_batch_size=12,
        score_batches=1, challenge_every=1, adversary_epochs=1, adversary_learning_rates=[1e-2], seed=0,
        save_strategy="no", hub_model_id="user/tiny-locked", hub_token=TOKEN,
    )  # fmt: skip
    trainer = EncoderLockTrainer(encoder, args, toy_domain(24, 0, "red"), toy_domain(24, 1, "green"), "red", "green")
    trainer.train()
    info = trainer.push_to_hub(commit_message="end of lock", gated=True)
    card = tmp_path / "run" / CARD_FILE
    meta = front_matter(card)[METADATA_KEY]
    assert meta["authorized"] == ["red"] and meta["prohibited"] == ["green"] and meta["mask_count"] == 5
    assert meta["weights"]["model.safetensors"] == sha256_file(tmp_path / "run" / "model.safetensors")
    repo = fake_hub.repos["user/tiny-locked"]
    assert info.oid == repo.commits[-1][0] and repo.gated == "auto"
    assert {CARD_FILE, "config.json", "model.safetensors", "preprocessor_config.json", LOCK_CONFIG_FILE} == set(
        repo.commits[-1][1]
    )
    assert not math.isnan(meta["mask_fraction"])


def test_offline_settings_are_restored_after_the_server_tests():
    assert (
        constants.HF_HUB_OFFLINE,
        os.environ.get("HF_HUB_OFFLINE"),
        os.environ.get("HF_ENDPOINT"),
    ) == OFFLINE_AT_IMPORT
    assert constants.ENDPOINT != "" and "127.0.0.1" not in constants.HUGGINGFACE_CO_URL_TEMPLATE


def test_a_push_never_changes_the_local_folder_even_when_it_fails(locked_folder, fake_hub, monkeypatch):
    def snapshot():
        return {p.name: p.read_bytes() for p in locked_folder.iterdir() if p.is_file()}

    before = snapshot()
    push_locked_to_hub(locked_folder, "user/first", gated=True, token=TOKEN, license="apache-2.0")
    assert snapshot() == before  # the card for the repo was rendered in a copy

    def network_down(*args, **kwargs):
        raise OSError("network down")

    monkeypatch.setattr(HfApi, "upload_folder", network_down)
    with pytest.raises(OSError, match="network down"):
        push_locked_to_hub(locked_folder, "user/second", token=TOKEN)
    assert snapshot() == before
    assert not [p for p in locked_folder.parent.iterdir() if p.name.startswith(".")]
