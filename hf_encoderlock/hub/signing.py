"""Signed locks: every published file of a locked folder signed with OpenSSF ``model-signing``, checked before loading.

The card's hashes show that the files are the ones the card describes, but whoever can push to the repository can
rewrite both. A signature made with the owner's elliptic-curve private key (works offline, no Sigstore account)
covers every file a push publishes, the card included, and only the owner's public key verifies it:

- :func:`sign_locked` writes ``model.sig`` (a Sigstore bundle, ``model_signing``'s format) into the folder;
- :func:`verify_signature` refuses any file added, removed or changed since signing, or a signature made with
  another key (``load_locked(..., public_key=...)`` and ``LockedEncoder.from_pretrained(..., public_key=...)``).

Optional: ``pip install 'hf_encoderlock[signing]'``.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from .._files import CARD_FILE, SIGNATURE_FILE
from .._utils import optional_import
from .authorization import Authorization, LockVerificationError
from .manifest import HASH_ALGORITHM, accountable_files, is_private_file, published_files, sha256_file

__all__ = ["SIGNATURE_FILE", "require_signing", "sign_locked", "signed_files", "verify_signature"]

SIGNING_EXTRA = "signing"
PEM_MARKER = "-----BEGIN"

KeyLike = str | os.PathLike | bytes


def _model_signing(module: str) -> ModuleType:
    return optional_import(f"model_signing.{module}", SIGNING_EXTRA, "Signing or verifying a locked encoder")


def require_signing() -> None:
    """Raise a one-line ``ImportError`` naming the ``[signing]`` extra when ``model_signing`` is not installed
    (called before anything is written or uploaded)."""
    _model_signing("signing")


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class _NamedFiles:
    """A ``model_signing`` hashing configuration that hashes exactly the named top-level files.

    ``model_signing`` hashes a whole directory tree by default; a locked folder also holds private files (the mask,
    the Trainer state), checkpoints and hidden caches that are never published. Naming the files keeps those out of
    the manifest without listing their names in it (an ignore list would be signed and published).
    """

    def __init__(self, names: Iterable[str]) -> None:
        hashing = _model_signing("hashing")
        # Hub cache snapshots are links to blobs: follow them (the blob's bytes are what gets loaded)
        self._config = (
            hashing.Config().use_file_serialization(hashing_algorithm=HASH_ALGORITHM).set_allow_symlinks(True)
        )
        self.names = sorted(names)

    def hash(self, model_path: Any, *, files_to_hash: Any = None) -> Any:
        """The manifest of the named files of ``model_path`` (``files_to_hash`` is ignored: the names decide)."""
        root = Path(model_path)
        return self._config.hash(root, files_to_hash=[root / name for name in self.names])

    def add_ignored_paths(self, *, model_path: Any, paths: Any) -> None:
        """Nothing to add: only the named files are hashed (the signed manifest lists git files it ignored)."""


def signed_files(folder: str | Path, include_mask: bool = False) -> list[str]:
    """The files :func:`sign_locked` covers: every file a push publishes from ``folder`` (the card included, the
    mask only with ``include_mask``), except the signature itself."""
    return [name for name in published_files(folder, include_mask=include_mask) if name != SIGNATURE_FILE]


def sign_locked(
    folder: str | Path,
    private_key: str | os.PathLike,
    *,
    password: str | bytes | None = None,
    include_mask: bool = False,
    check_with: KeyLike | None = None,
) -> Path:
    """Sign every published file of the locked ``folder`` with an elliptic-curve private key (PEM); returns the
    signature's path (``folder / "model.sig"``, replaced if present).

    The folder is checked against its card first, so only files the card vouches for are signed. Sign after the
    last change to any file, the card included (``push_locked_to_hub(..., sign_key=...)`` renders the card, then
    signs). With ``check_with`` (the public key), the new signature is verified at once; if it does not verify, the
    folder's signature is put back as it was (none, or the earlier one), so a failed check never leaves the folder
    looking signed. Raises ``FileNotFoundError`` for a missing key, ``ValueError`` for a key that cannot sign.
    """
    folder = Path(folder)
    key = Path(private_key).expanduser()
    if not key.is_file():
        raise FileNotFoundError(f"no private key at {key}")
    Authorization.from_card(folder / CARD_FILE).verify(folder)
    signing = _model_signing("signing")
    secret = password.encode() if isinstance(password, str) else password
    _check_elliptic_private_key(key, secret)
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=key, password=secret)
    except Exception as error:  # not PEM, wrong or missing password
        raise ValueError(f"cannot sign with {key}: {_one_line(error)}") from error
    config.set_hashing_config(_NamedFiles(signed_files(folder, include_mask=include_mask)))
    path = folder / SIGNATURE_FILE
    earlier = path.read_bytes() if path.is_file() else None
    if path.is_symlink():  # a Hub cache snapshot links to a shared blob: replace the link, never write through it
        path.unlink()
    config.sign(folder, path)
    if check_with is not None:
        try:
            verify_signature(folder, check_with)
        except BaseException:
            path.unlink(missing_ok=True)
            if earlier is not None:
                path.write_bytes(earlier)
            raise
    return path


def _check_elliptic_private_key(key: Path, password: bytes | None) -> None:
    """Refuse a private key that is not an elliptic-curve one with a message that says so (model-signing's own
    error for an RSA key is about a missing ``curve`` attribute, raised only while signing)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        loaded = load_pem_private_key(key.read_bytes(), password=password)
    except Exception as error:  # not PEM, wrong or missing password: model-signing's message follows
        raise ValueError(f"cannot sign with {key}: {_one_line(error)}") from error
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(
            f"cannot sign with {key}: it holds an {type(loaded).__name__.removeprefix('_')}, and signing needs an "
            "elliptic-curve key (e.g. `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`)"
        )


@contextmanager
def _key_file(public_key: KeyLike) -> Iterator[Path]:
    """A path to the PEM public key, given as a path or as the PEM text itself (written to a temporary file)."""
    text = public_key.decode(errors="replace") if isinstance(public_key, bytes) else public_key
    if isinstance(text, str) and text.lstrip().startswith(PEM_MARKER):
        with tempfile.TemporaryDirectory(prefix="encoderlock-key-") as scratch:
            path = Path(scratch) / "public.pem"
            path.write_text(text)
            yield path
        return
    path = Path(os.fspath(public_key)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no public key at {path}")
    yield path


def _signed_digests(signature: Path) -> dict[str, tuple[str, str]]:
    """``{file: (algorithm, hex digest)}`` listed in a signature bundle, read without checking the signature.

    Used only to decide which private files the signature covers and to name the files that differ; the signature
    itself is then checked by ``model_signing``, so an edited list is refused there.
    """
    try:
        bundle = json.loads(signature.read_text(encoding="utf-8"))
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        resources = statement["predicate"]["resources"]
        return {str(r["name"]): (str(r["algorithm"]), str(r["digest"])) for r in resources}
    except Exception as error:  # not JSON, not a DSSE bundle, not model-signing's statement
        raise LockVerificationError(
            f"{SIGNATURE_FILE} is not a model-signing signature bundle ({_one_line(error)})"
        ) from error


def _present_files(folder: Path, signed: dict[str, Any]) -> list[str]:
    """The top-level files a signature must account for: the same files as the card's verification (published or
    loadable, see :func:`accountable_files`) but the signature, and a private file (the mask) only when the
    signature lists it (a local folder keeps its private files next to the lock)."""
    private = [p.name for p in folder.iterdir() if p.is_file() and is_private_file(p.name) and p.name in signed]
    return sorted({*accountable_files(folder), *private} - {SIGNATURE_FILE})


def _differences(folder: Path, present: list[str], signed: dict[str, tuple[str, str]]) -> list[str]:
    problems = [f"{name}: not signed (added after signing)" for name in present if name not in signed]
    problems += [f"{name}: signed but missing" for name in sorted(set(signed) - set(present))]
    for name in present:
        algorithm, digest = signed.get(name, (HASH_ALGORITHM, ""))
        if name in signed and algorithm == HASH_ALGORITHM and sha256_file(folder / name) != digest:
            problems.append(f"{name}: changed since it was signed")
    return problems


def signature_mismatches(folder: str | Path) -> list[str]:
    """Without a key: how ``folder``'s files differ from the digests its ``model.sig`` lists (files added, removed
    or changed since signing); empty when there is no signature or nothing differs.

    This proves nothing about who signed (only :func:`verify_signature` with the owner's key does), but a signature
    that no longer matches says the folder was edited after signing."""
    folder = Path(folder)
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        return []
    try:
        signed = _signed_digests(signature)
    except LockVerificationError as error:
        return [str(error)]
    return _differences(folder, _present_files(folder, signed), signed)


def verify_signature(folder: str | Path, public_key: KeyLike) -> None:
    """Check ``folder``'s ``model.sig`` with ``public_key`` (a PEM file's path, or the PEM text).

    Raises :class:`LockVerificationError` when the folder has no signature, when a file was added, removed or
    changed since signing (the message names it), or when the signature was not made with the matching private
    key; ``FileNotFoundError`` / ``ValueError`` for a missing or unreadable public key.
    """
    folder = Path(folder)
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise LockVerificationError(
            f"{folder} has no {SIGNATURE_FILE}: the lock is not signed, so it cannot be checked against a public key"
        )
    verifying = _model_signing("verifying")
    signed = _signed_digests(signature)
    present = _present_files(folder, signed)
    with _key_file(public_key) as key:
        try:
            config = verifying.Config().use_elliptic_key_verifier(public_key=key)
        except Exception as error:  # not PEM, not an elliptic-curve public key
            raise ValueError(f"cannot read the public key: {_one_line(error)}") from error
        try:
            config.set_hashing_config(_NamedFiles(present)).verify(folder, signature)
        except Exception as error:  # a changed manifest, another key, an edited signature
            problems = _differences(folder, present, signed)
            if problems:
                raise LockVerificationError(
                    f"the files do not match the signature in {SIGNATURE_FILE}: " + "; ".join(problems)
                ) from error
            raise LockVerificationError(
                f"{SIGNATURE_FILE} does not verify with the given public key (signed with another key, or the "
                f"signature was edited): {_one_line(error)}"
            ) from error
