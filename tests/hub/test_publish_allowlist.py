"""What a push may publish: only the lock's own files, from every push path, and no local path in them."""

from __future__ import annotations

import json
import logging

import pytest
import transformers.utils as hf_utils

from hf_encoderlock._files import CARD_FILE, PUBLISHED_FILES
from hf_encoderlock.cli.main import main as cli_main
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub.card import write_model_card
from hf_encoderlock.hub.locked import LockedEncoder
from hf_encoderlock.hub.push import push_locked_to_hub
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, EncoderLockTrainer
from tests.helpers import toy_domain
from tests.hub_server import TOKEN

LOCK_FILES = {CARD_FILE, "config.json", "model.safetensors", "preprocessor_config.json", LOCK_CONFIG_FILE}
SECRETS = {"notes.txt": b"my notes", "id_rsa": b"-----BEGIN KEY-----", "secrets.yaml": b"token: hf_xxx"}


def _plant_user_files(folder, outside):
    for name, data in SECRETS.items():
        (folder / name).write_bytes(data)
    (outside / "private.txt").write_bytes(b"outside the folder")
    (folder / "linked.txt").symlink_to(outside / "private.txt")


def _uploaded_bytes(repo) -> bytes:
    return b"".join(data for _, files in repo.commits for data in files.values())


def test_the_allow_list_names_what_transformers_writes():
    for name in (hf_utils.CONFIG_NAME, hf_utils.SAFE_WEIGHTS_NAME, hf_utils.SAFE_WEIGHTS_INDEX_NAME):
        assert name in PUBLISHED_FILES
    assert hf_utils.IMAGE_PROCESSOR_NAME in PUBLISHED_FILES


@pytest.mark.parametrize("path", ["function", "cli"])
def test_push_uploads_only_the_lock_files(locked_folder, fake_hub, tmp_path, path):
    _plant_user_files(locked_folder, tmp_path)
    if path == "function":
        push_locked_to_hub(locked_folder, "user/leak", token=TOKEN)
    else:
        assert cli_main(["push", str(locked_folder), "user/leak", "--token", TOKEN]) == 0
    repo = fake_hub.repos["user/leak"]
    assert set(repo.commits[-1][1]) == LOCK_FILES
    uploaded = _uploaded_bytes(repo)
    assert b"outside the folder" not in uploaded and not any(data in uploaded for data in SECRETS.values())
    card = repo.commits[-1][1][CARD_FILE].decode()  # the card hashes what was published, nothing else
    assert not any(name in card for name in (*SECRETS, "linked.txt"))


def test_a_symlinked_lock_file_is_refused(locked_folder, fake_hub, tmp_path):
    real = tmp_path / "elsewhere.json"
    real.write_text((locked_folder / "preprocessor_config.json").read_text())
    (locked_folder / "preprocessor_config.json").unlink()
    (locked_folder / "preprocessor_config.json").symlink_to(real)
    with pytest.raises(ValueError, match="symbolic links.*preprocessor_config.json"):
        push_locked_to_hub(locked_folder, "user/link", token=TOKEN)
    assert "user/link" not in fake_hub.repos


def test_the_card_does_not_hash_user_files_and_the_lock_still_loads(locked_folder, tmp_path):
    _plant_user_files(locked_folder, tmp_path)
    write_model_card(locked_folder)
    card = (locked_folder / CARD_FILE).read_text()
    assert not any(name in card for name in (*SECRETS, "linked.txt"))
    locked = LockedEncoder.from_pretrained(locked_folder)  # the user's notes beside it are not the lock's files
    assert locked.authorization.prohibited


def _tiny_args(tiny_lock_config, root=None, **overrides):
    return tiny_lock_config(
        root, preset={}, num_rounds=1, update_steps_per_round=1, weights_per_round=5, per_device_train_batch_size=12,
        score_batches=1, challenge_every=1, adversary_epochs=1, adversary_learning_rates=[1e-2], seed=0,
        save_strategy="no", hub_token=TOKEN, **overrides,
    )  # fmt: skip


@pytest.mark.slow
def test_trainer_push_with_overwrite_keeps_user_files_local(tmp_path, fake_hub, tiny_lock_config):
    run = tmp_path / "run"
    run.mkdir()
    _plant_user_files(run, tmp_path)
    args = _tiny_args(tiny_lock_config, hub_model_id="user/trainer-leak", overwrite_output_dir=True)
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    trainer = EncoderLockTrainer(encoder, args, toy_domain(24, 0, "red"), toy_domain(24, 1, "green"), "red", "green")
    trainer.train()
    trainer.push_to_hub()
    repo = fake_hub.repos["user/trainer-leak"]
    assert set(repo.commits[-1][1]) == LOCK_FILES
    assert (run / "notes.txt").read_bytes() == SECRETS["notes.txt"]  # kept, not published


def test_locked_encoder_push_publishes_only_lock_files(locked_folder, fake_hub, tmp_path):
    write_model_card(locked_folder)
    _plant_user_files(locked_folder, tmp_path)
    LockedEncoder.from_pretrained(locked_folder).push_to_hub("user/obj", token=TOKEN)
    assert set(fake_hub.repos["user/obj"].commits[-1][1]) == LOCK_FILES


def test_lock_config_records_no_local_path(tmp_path, tiny_lock_config):
    source = tmp_path / "private_models" / "vit-secret-project"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(source)
    domain_dir = tmp_path / "alice" / "faces-dataset"
    domain_dir.mkdir(parents=True)
    args = _tiny_args(tiny_lock_config)
    trainer = EncoderLockTrainer(
        str(source), args, toy_domain(24, 0, "red"), toy_domain(24, 1, "green"),
        authorized_name=str(domain_dir), prohibited_name="green",
        domain_specs={"authorized": [{"name": str(domain_dir), "config": None}], "prohibited": str(domain_dir)},
    )  # fmt: skip
    text = json.dumps(trainer.lock_summary())
    assert str(tmp_path) not in text and "vit-secret-project" not in text
    assert "faces-dataset" in text  # the display name stays
    assert trainer.lock_summary()["base_model"] is None


def test_a_hub_source_warns_and_is_not_named_unless_asked(locked_folder, fake_hub, tmp_path, caplog, tiny_lock_config):
    config = json.loads((locked_folder / LOCK_CONFIG_FILE).read_text())
    config["base_model"] = "google/vit-base-patch16-224"
    (locked_folder / LOCK_CONFIG_FILE).write_text(json.dumps(config))
    push_locked_to_hub(locked_folder, "user/nobase", token=TOKEN)
    card = fake_hub.repos["user/nobase"].commits[-1][1][CARD_FILE].decode()
    assert "google/vit-base-patch16-224" not in card
    push_locked_to_hub(locked_folder, "user/base", token=TOKEN, base_model="google/vit-base-patch16-224")
    card = fake_hub.repos["user/base"].commits[-1][1][CARD_FILE].decode()
    assert "base_model: google/vit-base-patch16-224" in card

    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    encoder.backbone.config._name_or_path = "google/vit-base-patch16-224"  # as from_pretrained("google/...") sets it
    with caplog.at_level(logging.WARNING, logger="hf_encoderlock"):
        args = _tiny_args(tiny_lock_config, tmp_path / "second")
        EncoderLockTrainer(encoder, args, toy_domain(24, 0, "red"), toy_domain(24, 1, "green"), "red", "green")
    assert "locking protects nothing" in caplog.text
