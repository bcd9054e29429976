"""``LockedEncoder``: the PEFT-like object of a locked encoder, from a folder and over a local Hub-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import hf_encoderlock
from hf_encoderlock._files import CARD_FILE, LOCK_CONFIG_FILE
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub import LockedEncoder, LockVerificationError, load_locked, push_locked_to_hub, write_model_card
from hf_encoderlock.hub.authorization import METADATA_KEY
from hf_encoderlock.hub.push import MASK_FILE
from tests.helpers import card_report, lock_config, toy_domain
from tests.hub_server import TOKEN

HIDDEN_SIZE = 32  # tiny_vit_encoder's default width
RELEASED = {CARD_FILE, "config.json", "model.safetensors", "preprocessor_config.json", LOCK_CONFIG_FILE}


@pytest.fixture
def locked_folder(tmp_path) -> Path:
    """A saved lock (tiny ViT, hand-written config with poolings, the private mask) with its card."""
    folder = tmp_path / "locked"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(folder)
    (folder / LOCK_CONFIG_FILE).write_text(json.dumps({**lock_config(), "poolings": ["cls"]}))
    (folder / MASK_FILE).write_bytes(b"which weights changed: private")
    write_model_card(folder, report=card_report())
    return folder


@pytest.fixture(scope="module")
def images() -> list:
    return list(toy_domain(5, 0, "red")["image"])


def tamper(weights: Path) -> None:
    """A plausible "unlocking" edit of one tensor."""
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(weights), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------- a folder
def test_from_a_folder_with_its_authorization_and_processor(locked_folder):
    locked = LockedEncoder.from_pretrained(locked_folder)
    assert locked.authorization.authorized == ("red",) and locked.authorization.prohibited == ("green",)
    assert locked.authorization.is_prohibited("green") and locked.authorization.poolings == ("cls",)
    assert locked.authorization.accuracy["green"]["locked"] == pytest.approx(0.36)
    assert locked.processor is locked.encoder.image_processor and locked.processor is not None
    assert locked.folder == locked_folder and locked.pooling == "cls"
    assert "authorized=['red']" in repr(locked) and "prohibited=['green']" in repr(locked)

    encoder, processor, authorization = load_locked(locked_folder)  # the tuple API is unchanged
    assert authorization == locked.authorization
    assert type(processor) is type(locked.processor)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, locked.encoder.state_dict()[name])
    assert hf_encoderlock.LockedEncoder is LockedEncoder  # the lazy top-level export


def test_features_shape_determinism_and_modes(locked_folder, images):
    locked = LockedEncoder.from_pretrained(locked_folder)
    locked.encoder.train()  # whatever mode the user left it in, features are computed in eval mode
    features = locked.features(images, batch_size=2)
    assert features.shape == (5, HIDDEN_SIZE) and features.dtype == torch.float32
    assert not features.requires_grad and locked.encoder.training  # the mode is restored
    assert torch.equal(locked.features(images), features)  # batching and repeats do not change anything
    assert torch.allclose(locked.features(images[1]), features[1:2], atol=1e-6)  # one image -> (1, dim)
    mean = locked.features(images, pooling="mean")
    assert mean.shape == (5, HIDDEN_SIZE) and not torch.allclose(mean, features)

    pixels = locked.encoder.preprocess(images)
    locked.encoder.eval()
    with torch.no_grad():
        assert torch.allclose(locked.encoder.features(pixels), features, atol=1e-6)
    with pytest.raises(ValueError, match="at least one image"):
        locked.features([])
    with pytest.raises(TypeError, match="PIL images"):
        locked.features([pixels[0]])


def test_tampered_weights_are_refused(locked_folder, tmp_path):
    locked = LockedEncoder.from_pretrained(locked_folder)
    tamper(locked_folder / "model.safetensors")
    with pytest.raises(LockVerificationError, match="model.safetensors: sha256"):
        LockedEncoder.from_pretrained(locked_folder)
    with pytest.raises(LockVerificationError, match="does not match"):  # changed on disk after loading
        locked.save_pretrained(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_save_pretrained_round_trip(locked_folder, tmp_path, images):
    locked = LockedEncoder.from_pretrained(locked_folder)
    saved = locked.save_pretrained(tmp_path / "copy")
    assert saved == (tmp_path / "copy").resolve()
    assert {p.name for p in saved.iterdir()} == RELEASED  # never the mask
    assert (saved / CARD_FILE).read_bytes() == (locked_folder / CARD_FILE).read_bytes()

    again = LockedEncoder.from_pretrained(saved)
    assert again.authorization == locked.authorization and again.folder == saved
    assert torch.equal(again.features(images), locked.features(images))
    assert locked.save_pretrained(locked_folder) == locked_folder.resolve()  # onto itself: only verified


# ----------------------------------------------------------------------------------------------- over HTTP
def test_push_then_from_pretrained_over_http(locked_folder, fake_hub, tmp_path, images):
    push_locked_to_hub(locked_folder, "user/x", token=TOKEN, license="apache-2.0")
    first = fake_hub.repos["user/x"].commits[-1][0]
    locked = LockedEncoder.from_pretrained("user/x")
    assert locked.name == "user/x" and (tmp_path / "hub-cache") in locked.folder.parents
    assert locked.authorization.prohibited == ("green",) and locked.authorization.poolings == ("cls",)
    assert torch.equal(locked.features(images), LockedEncoder.from_pretrained(locked_folder).features(images))
    assert ModelCard.load(locked.folder / CARD_FILE).data.license == "apache-2.0"

    files = dict(fake_hub.repos["user/x"].commits[-1][1])
    tampered = locked_folder.parent / "tampered.safetensors"
    tampered.write_bytes(files["model.safetensors"])
    tamper(tampered)
    fake_hub.repos["user/x"].commits.append(("f" * 40, {**files, "model.safetensors": tampered.read_bytes()}))
    with pytest.raises(LockVerificationError, match="does not match"):  # someone replaced the weights, not the card
        LockedEncoder.from_pretrained("user/x")
    assert LockedEncoder.from_pretrained("user/x", revision=first).authorization == locked.authorization


def test_push_to_hub_from_a_download_uploads_no_mask_and_keeps_the_results(locked_folder, fake_hub):
    push_locked_to_hub(locked_folder, "user/x", token=TOKEN, license="apache-2.0", include_mask=True)
    assert MASK_FILE in fake_hub.repos["user/x"].commits[-1][1]  # the owner chose to publish it on x
    locked = LockedEncoder.from_pretrained("user/x")
    snapshot_card = (locked.folder / CARD_FILE).read_bytes()

    info = locked.push_to_hub("user/y", token=TOKEN, gated=True, commit_message="mirror")
    repo = fake_hub.repos["user/y"]
    assert info.oid == repo.commits[-1][0] and repo.gated == "auto"
    files = repo.commits[-1][1]
    assert set(files) == RELEASED  # no mask unless include_mask=True
    card = ModelCard(files[CARD_FILE].decode())
    meta = card.data.to_dict()
    assert meta["model-index"][0]["name"] == "user/y" and meta["license"] == "apache-2.0"  # kept from x's card
    original = ModelCard.load(locked_folder / CARD_FILE).data.to_dict()[METADATA_KEY]
    assert meta[METADATA_KEY]["accuracy"] == original["accuracy"]  # results kept without report.json
    assert 'load_locked("user/y")' in card.text and meta["extra_gated_fields"]
    assert (locked.folder / CARD_FILE).read_bytes() == snapshot_card  # the Hub cache was not rewritten
    assert files["model.safetensors"] == (locked_folder / "model.safetensors").read_bytes()

    mirrored = LockedEncoder.from_pretrained("user/y", token=TOKEN)
    assert mirrored.authorization.weights == locked.authorization.weights

    LockedEncoder.from_pretrained(locked_folder).push_to_hub("user/z", token=TOKEN, license="mit", include_mask=True)
    assert MASK_FILE in fake_hub.repos["user/z"].commits[-1][1]
    assert ModelCard(fake_hub.repos["user/z"].commits[-1][1][CARD_FILE].decode()).data.license == "mit"
