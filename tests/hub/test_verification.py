"""Verification without a key: the card hashes every published file, and its authorization block must agree with
``encoderlock_config.json``; old weights-only cards are refused with a clear message; ``revision=`` pins a pull."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_encoderlock._files import CARD_FILE, LOCK_CONFIG_FILE
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub import Authorization, LockedEncoder, LockVerificationError, load_locked, write_model_card
from hf_encoderlock.hub.authorization import METADATA_KEY
from hf_encoderlock.hub.manifest import sha256_file
from hf_encoderlock.hub.push import MASK_FILE, push_locked_to_hub
from tests.helpers import card_report, front_matter, lock_config
from tests.hub_server import TOKEN


@pytest.fixture
def carded(locked_folder) -> Path:
    """The shared tiny lock (with its private mask) and its card."""
    write_model_card(locked_folder, report=card_report())
    return locked_folder


def edit_block(folder: Path, **changes) -> None:
    """Change fields of the card's ``encoderlock:`` block (``None`` removes one), as an edit of the README would."""
    path = folder / CARD_FILE
    card = ModelCard.load(path)
    block = dict(card.data.to_dict()[METADATA_KEY])
    for key, value in changes.items():
        if value is None:
            block.pop(key, None)
        else:
            block[key] = value
    setattr(card.data, METADATA_KEY, block)
    card.save(path)


def test_the_card_hashes_every_published_file_but_itself(carded):
    block = front_matter(carded / CARD_FILE)[METADATA_KEY]
    assert block["format"] == "encoderlock-card/v2"
    assert block["weights"] == {"model.safetensors": sha256_file(carded / "model.safetensors")}
    assert block["files"] == {
        name: sha256_file(carded / name) for name in ("config.json", LOCK_CONFIG_FILE, "preprocessor_config.json")
    }  # never the private mask, never the card itself
    text = ModelCard.load(carded / CARD_FILE).text
    assert "`config.json`" in text and "do not prove who published them" in text
    assert Authorization.from_card(carded / CARD_FILE).files == block["files"]


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json", LOCK_CONFIG_FILE])
def test_a_changed_config_file_is_refused_by_hash(carded, name):
    path = carded / name
    data = json.loads(path.read_text())
    if name == "config.json":  # what the issue saw load as "verified": another depth and activation
        data.update(num_hidden_layers=1, hidden_act="relu")
    else:
        data["edited"] = True
    path.write_text(json.dumps(data))
    with pytest.raises(LockVerificationError, match=f"{name}: sha256 .* does not match the card's"):
        load_locked(carded)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: (f / "custom_code.py").write_text("import os"), "custom_code.py: not declared in the card"),
        (lambda f: (f / "preprocessor_config.json").unlink(), "preprocessor_config.json: missing"),
        (lambda f: (f / LOCK_CONFIG_FILE).unlink(), f"{LOCK_CONFIG_FILE}: missing"),
    ],
    ids=["added file", "removed processor", "removed lock config"],
)
def test_an_added_or_removed_file_is_refused(carded, change, message):
    change(carded)
    with pytest.raises(LockVerificationError, match=message):
        LockedEncoder.from_pretrained(carded)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"authorized": ["green"]}, r"authorized: the card says \['green'\], encoderlock_config.json says \['red'\]"),
        ({"prohibited": ["blue"]}, r"prohibited: the card says \['blue'\]"),
        ({"variant": "unsupervised"}, "variant: the card says 'unsupervised'"),
        ({"mask_count": 5}, "mask_count: the card says 5, encoderlock_config.json says 20"),
    ],
    ids=["authorized", "prohibited", "variant", "mask count"],
)
def test_a_card_disagreeing_with_the_lock_config_is_refused(carded, changes, message):
    edit_block(carded, **changes)
    with pytest.raises(LockVerificationError, match=message):
        load_locked(carded)


def test_a_lock_config_edited_with_its_hash_is_still_refused(carded):
    """Someone who can edit the repository changes the prohibited domain and re-hashes the file in the card: the
    card's own prohibited list still disagrees (and whoever also edits that list is what a signature is for)."""
    config = {**lock_config(), "prohibited": ["blue"]}
    (carded / LOCK_CONFIG_FILE).write_text(json.dumps(config))
    files = dict(front_matter(carded / CARD_FILE)[METADATA_KEY]["files"])
    files[LOCK_CONFIG_FILE] = sha256_file(carded / LOCK_CONFIG_FILE)
    edit_block(carded, files=files)
    with pytest.raises(LockVerificationError, match=r"prohibited: the card says \['green'\].*says \['blue'\]"):
        load_locked(carded)


def test_an_old_weights_only_card_is_refused_with_a_clear_message(carded):
    edit_block(carded, format="encoderlock-card/v1", files=None)
    authorization = Authorization.from_card(carded / CARD_FILE)  # still readable
    assert authorization.files == {} and authorization.prohibited == ("green",)
    with pytest.raises(LockVerificationError, match="encoderlock-card/v1 card: it hashes the weight files only"):
        load_locked(carded)
    edit_block(carded, format="encoderlock-card/v2")
    with pytest.raises(LockVerificationError, match="lacks files"):
        load_locked(carded)
    write_model_card(carded)  # rendering again fixes it
    load_locked(carded)


def test_a_pushed_mask_is_hashed_and_may_be_left_out_of_a_copy(locked_folder, tmp_path):
    write_model_card(locked_folder, report=card_report(), include_mask=True)
    block = front_matter(locked_folder / CARD_FILE)[METADATA_KEY]
    assert block["files"][MASK_FILE] == sha256_file(locked_folder / MASK_FILE)
    locked = LockedEncoder.from_pretrained(locked_folder)
    locked.save_pretrained(tmp_path / "copy")  # the private mask stays behind: still verified
    (locked_folder / MASK_FILE).write_bytes(b"another mask")
    with pytest.raises(LockVerificationError, match=f"{MASK_FILE}: sha256"):
        load_locked(locked_folder)


def test_a_zero_shot_card_keeps_the_measured_prohibited_domains(locked_folder):
    config = {**lock_config(), "prohibited": [{"zero_shot_generators": ["shapes"], "images": 60}]}
    (locked_folder / LOCK_CONFIG_FILE).write_text(json.dumps(config))
    write_model_card(locked_folder, report=card_report())
    assert load_locked(locked_folder)[2].prohibited == ("green",)  # from the report: the config names none


def test_revision_pins_a_pull_to_the_reviewed_commit(carded, fake_hub):
    push_locked_to_hub(carded, "user/pinned", token=TOKEN)
    repo = fake_hub.repos["user/pinned"]
    reviewed, files = repo.commits[-1]
    config = json.loads(files["config.json"])
    config["num_hidden_layers"] = 1
    repo.commits.append(("e" * 40, {**files, "config.json": json.dumps(config).encode()}))
    with pytest.raises(LockVerificationError, match="config.json: sha256"):
        load_locked("user/pinned")
    encoder, _, _ = load_locked("user/pinned", revision=reviewed)
    assert encoder.backbone.config.num_hidden_layers == 2


def test_a_local_folder_named_like_the_repo_does_not_shadow_a_pinned_revision(carded, fake_hub, tmp_path, monkeypatch):
    push_locked_to_hub(carded, "user/pinned", token=TOKEN)
    reviewed = fake_hub.repos["user/pinned"].commits[-1][0]
    monkeypatch.chdir(tmp_path)
    decoy = tmp_path / "user" / "pinned"  # a folder an attacker planted where the user runs the code
    shutil.copytree(carded, decoy)
    encoder = tiny_vit_encoder(seed=5, image_size=16, patch_size=4, num_layers=1)
    encoder.save_pretrained(decoy)
    write_model_card(decoy)  # a self-consistent decoy: its card matches its files
    opened = LockedEncoder.from_pretrained("user/pinned", revision=reviewed)
    assert decoy.resolve() not in opened.folder.resolve().parents and opened.folder.resolve() != decoy.resolve()
    assert opened.encoder.backbone.config.num_hidden_layers == 2  # the reviewed commit, not the decoy
    with pytest.raises(ValueError, match="is a local folder"):
        load_locked(Path("./user/pinned"), revision=reviewed)
