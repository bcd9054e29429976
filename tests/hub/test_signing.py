"""Signed locks: ``model.sig`` over every published file, refused on any added, removed or changed file or another key.

Keys are generated here, per test, with ``cryptography`` (installed with model-signing); none is ever committed.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("model_signing.signing", reason="the [signing] extra is not installed")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from hf_encoderlock._files import CARD_FILE, LOCK_CONFIG_FILE  # noqa: E402
from hf_encoderlock.cli.main import main as cli_main  # noqa: E402
from hf_encoderlock.hub import (  # noqa: E402
    LockedEncoder,
    LockVerificationError,
    load_locked,
    push_locked_to_hub,
    sign_locked,
    verify_signature,
    write_model_card,
)
from hf_encoderlock.hub.manifest import sha256_file  # noqa: E402
from hf_encoderlock.hub.push import MASK_FILE  # noqa: E402
from hf_encoderlock.hub.signing import SIGNATURE_FILE, signed_files  # noqa: E402
from tests.helpers import card_report  # noqa: E402
from tests.hub_server import TOKEN  # noqa: E402

RELEASED = {CARD_FILE, "config.json", "model.safetensors", "preprocessor_config.json", LOCK_CONFIG_FILE}


def make_keys(folder: Path, name: str = "owner") -> tuple[Path, Path]:
    """A fresh P-256 key pair as PEM files ``name.pem`` (private) and ``name.pub`` in ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / f"{name}.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = folder / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "keys").mkdir()
    return make_keys(tmp_path / "keys")


@pytest.fixture
def signed_folder(locked_folder, keys) -> Path:
    """The shared tiny lock (with its private mask) with its card, signed with ``keys``."""
    write_model_card(locked_folder, report=card_report())
    sign_locked(locked_folder, keys[0])
    return locked_folder


def rewrite(path: Path) -> None:
    """Change a file the way an edit would: same kind of content, one byte more."""
    path.write_bytes(path.read_bytes() + (b"\n" if path.suffix in (".json", ".md") else b"\0"))


# ------------------------------------------------------------------------------------------------ sign, verify
def test_sign_then_verify_covers_every_published_file(signed_folder, keys):
    assert set(signed_files(signed_folder)) == RELEASED  # the card included; the mask and signature not
    verify_signature(signed_folder, keys[1])
    verify_signature(signed_folder, keys[1].read_bytes())  # the PEM text works as well as its path
    encoder, processor, authorization = load_locked(signed_folder, public_key=keys[1])
    assert authorization.prohibited == ("green",) and processor is encoder.image_processor
    locked = LockedEncoder.from_pretrained(signed_folder, public_key=str(keys[1]))
    assert locked.public_key == str(keys[1])


@pytest.mark.parametrize(
    "name", ["model.safetensors", "config.json", "preprocessor_config.json", LOCK_CONFIG_FILE, CARD_FILE]
)
def test_a_changed_file_is_refused_by_name(signed_folder, keys, name):
    rewrite(signed_folder / name)
    with pytest.raises(LockVerificationError, match=f"{name}: changed since it was signed"):
        load_locked(signed_folder, public_key=keys[1])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: (f / "extra.py").write_text("print('hi')"), "extra.py: not signed"),
        (lambda f: (f / "pytorch_model.bin").write_bytes(b"smuggled"), "pytorch_model.bin: not signed"),
        (lambda f: (f / "preprocessor_config.json").unlink(), "preprocessor_config.json: signed but missing"),
        (lambda f: (f / CARD_FILE).unlink(), f"{CARD_FILE}: signed but missing"),
    ],
    ids=["added file", "added weights", "removed file", "removed card"],
)
def test_an_added_or_removed_file_is_refused_by_name(signed_folder, keys, change, message):
    change(signed_folder)
    with pytest.raises(LockVerificationError, match=message):
        load_locked(signed_folder, public_key=keys[1])


def test_another_key_an_edited_signature_and_no_signature_are_refused(signed_folder, keys, tmp_path):
    _, other = make_keys(tmp_path / "keys", "someone-else")
    with pytest.raises(LockVerificationError, match="does not verify with the given public key"):
        load_locked(signed_folder, public_key=other)

    # someone edits a file and writes its new hash into the signed statement (without the private key)
    signature = signed_folder / SIGNATURE_FILE
    bundle = json.loads(signature.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    rewrite(signed_folder / "config.json")
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "config.json":
            resource["digest"] = sha256_file(signed_folder / "config.json")
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    signature.write_text(json.dumps(bundle))
    with pytest.raises(LockVerificationError, match="does not verify with the given public key"):
        load_locked(signed_folder, public_key=keys[1])

    signature.write_text("not a bundle")
    with pytest.raises(LockVerificationError, match="not a model-signing signature"):
        load_locked(signed_folder, public_key=keys[1])
    signature.unlink()
    with pytest.raises(LockVerificationError, match="not signed"):
        load_locked(signed_folder, public_key=keys[1])


def test_the_private_mask_is_signed_only_when_asked(signed_folder, keys):
    rewrite(signed_folder / MASK_FILE)  # private and unsigned: not part of what is loaded or published
    verify_signature(signed_folder, keys[1])
    sign_locked(signed_folder, keys[0], include_mask=True)
    assert MASK_FILE in signed_files(signed_folder, include_mask=True)
    verify_signature(signed_folder, keys[1])
    rewrite(signed_folder / MASK_FILE)
    with pytest.raises(LockVerificationError, match=f"{MASK_FILE}: changed since it was signed"):
        verify_signature(signed_folder, keys[1])


def test_signing_refuses_a_folder_that_does_not_match_its_card(locked_folder, keys):
    write_model_card(locked_folder, report=card_report())
    rewrite(locked_folder / "config.json")
    with pytest.raises(LockVerificationError, match="config.json: sha256"):
        sign_locked(locked_folder, keys[0])
    assert not (locked_folder / SIGNATURE_FILE).exists()
    with pytest.raises(FileNotFoundError, match="no private key"):
        sign_locked(locked_folder, locked_folder / "missing.pem")


def test_save_pretrained_keeps_and_rechecks_the_signature(signed_folder, keys, tmp_path):
    locked = LockedEncoder.from_pretrained(signed_folder, public_key=keys[1])
    copy = locked.save_pretrained(tmp_path / "copy")
    assert {p.name for p in copy.iterdir()} == RELEASED | {SIGNATURE_FILE}
    LockedEncoder.from_pretrained(copy, public_key=keys[1])
    rewrite(signed_folder / "preprocessor_config.json")
    with pytest.raises(LockVerificationError, match="preprocessor_config.json: changed"):
        locked.save_pretrained(tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_the_extra_is_named_when_model_signing_is_missing(signed_folder, keys, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_signing.verifying", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'hf_encoderlock\[signing\]'"):
        load_locked(signed_folder, public_key=keys[1])


# ------------------------------------------------------------------------------------------ push and pull (HTTP)
def test_push_signed_then_pull_with_the_public_key(locked_folder, keys, fake_hub, tmp_path):
    info = push_locked_to_hub(locked_folder, "user/signed", token=TOKEN, sign_key=keys[0])
    repo = fake_hub.repos["user/signed"]
    files = repo.commits[-1][1]
    assert info.oid == repo.commits[-1][0] and set(files) == RELEASED | {SIGNATURE_FILE}
    first = repo.commits[-1][0]

    locked = LockedEncoder.from_pretrained("user/signed", public_key=keys[1])
    assert (locked.folder / SIGNATURE_FILE).is_symlink() or (locked.folder / SIGNATURE_FILE).is_file()
    _, other = make_keys(tmp_path / "keys", "other")
    with pytest.raises(LockVerificationError, match="does not verify"):
        load_locked("user/signed", public_key=other)

    # the repository is edited server side (by whoever can push to it): a changed config, then an added file
    config = json.loads(files["config.json"])
    config["hidden_act"] = "relu"
    repo.commits.append(("c" * 40, {**files, "config.json": json.dumps(config).encode()}))
    with pytest.raises(LockVerificationError, match="config.json: changed since it was signed"):
        load_locked("user/signed", public_key=keys[1])
    repo.commits.append(("d" * 40, {**files, "extra.safetensors": b"smuggled"}))
    with pytest.raises(LockVerificationError, match="extra.safetensors: not signed"):
        load_locked("user/signed", public_key=keys[1])
    assert load_locked("user/signed", revision=first, public_key=keys[1])[2] == locked.authorization  # pinned


def test_a_signed_folder_is_not_pushed_with_a_stale_signature(signed_folder, keys, fake_hub):
    with pytest.raises(ValueError, match="pass sign_key"):
        push_locked_to_hub(signed_folder, "user/stale", token=TOKEN)
    assert "user/stale" not in fake_hub.repos  # refused before anything was created

    locked = LockedEncoder.from_pretrained(signed_folder, public_key=keys[1])
    locked.push_to_hub("user/mirror", token=TOKEN)  # the card is rendered for the mirror: the signature is dropped
    assert set(fake_hub.repos["user/mirror"].commits[-1][1]) == RELEASED
    locked.push_to_hub("user/resigned", token=TOKEN, sign_key=keys[0])
    LockedEncoder.from_pretrained("user/resigned", public_key=keys[1])


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_sign_and_push_with_sign_key(locked_folder, keys, fake_hub, capsys):
    write_model_card(locked_folder, report=card_report())
    assert cli_main(["sign", str(locked_folder), "--key", str(keys[0]), "--check", str(keys[1])]) == 0
    out = capsys.readouterr().out
    assert "signed 5 files" in out and f"{SIGNATURE_FILE} verifies" in out
    assert cli_main(["push", str(locked_folder), "user/cli-signed", "--token", TOKEN]) == 2  # stale otherwise
    assert "pass sign_key" in capsys.readouterr().err
    assert cli_main(["push", str(locked_folder), "user/cli-signed", "--token", TOKEN, "--sign-key", str(keys[0])]) == 0
    load_locked("user/cli-signed", public_key=keys[1])
    capsys.readouterr()  # the download's progress bars

    assert cli_main(["sign", str(locked_folder), "--key", str(locked_folder / "none.pem")]) == 2
    err = capsys.readouterr().err
    assert "no private key" in err and len(err.strip().splitlines()) == 1
    (locked_folder / "config.json").write_text("{}")
    assert cli_main(["sign", str(locked_folder), "--key", str(keys[0])]) == 2
    assert "config.json: sha256" in capsys.readouterr().err


def test_a_signed_folder_edited_after_signing_warns_without_a_key(signed_folder, recwarn):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an untouched signed lock loads without a word
        load_locked(signed_folder)
    rewrite(signed_folder / "preprocessor_config.json")
    write_model_card(signed_folder, report=card_report())  # the card re-hashed to match: only model.sig disagrees
    with pytest.warns(UserWarning, match=r"model.sig no longer matches.*preprocessor_config.json: changed since"):
        LockedEncoder.from_pretrained(signed_folder)


def test_a_failed_check_leaves_the_signature_as_it_was_and_an_rsa_key_is_named(locked_folder, keys, capsys):
    """`sign --check WRONG` exited 2 but left the new model.sig, so the folder counted as signed; an RSA key failed
    with "object has no attribute 'curve'" (both found on the user's path)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    write_model_card(locked_folder, report=card_report())
    other_private, other_public = make_keys(keys[0].parent, "other")
    assert cli_main(["sign", str(locked_folder), "--key", str(keys[0]), "--check", str(other_public)]) == 2
    capsys.readouterr()
    assert not (locked_folder / SIGNATURE_FILE).exists()  # not signed, as before
    sign_locked(locked_folder, keys[0])
    earlier = (locked_folder / SIGNATURE_FILE).read_bytes()
    with pytest.raises(LockVerificationError):
        sign_locked(locked_folder, other_private, check_with=keys[1])
    assert (locked_folder / SIGNATURE_FILE).read_bytes() == earlier  # the earlier signature, which still verifies
    verify_signature(locked_folder, keys[1])

    rsa_key = keys[0].parent / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert cli_main(["sign", str(locked_folder), "--key", str(rsa_key)]) == 2
    assert "it holds an RSAPrivateKey, and signing needs an elliptic-curve key" in capsys.readouterr().err
    assert (locked_folder / SIGNATURE_FILE).read_bytes() == earlier
