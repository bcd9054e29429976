"""``encoderlock sign``: sign every published file of a locked folder (``model.sig``, OpenSSF model-signing)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .._files import MASK_FILE, SIGNATURE_FILE
from ..hub.authorization import LockVerificationError
from ..hub.signing import require_signing, sign_locked, signed_files

# A folder whose files no longer match its card is the user's to fix (exit 2), not a crash.
USER_ERRORS = (LockVerificationError, ImportError)
PASSWORD_ENV = "ENCODERLOCK_KEY_PASSWORD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``encoderlock sign``."""
    parser.add_argument("locked", type=Path, help="A locked encoder folder with its model card.")
    parser.add_argument(
        "--key", required=True, type=Path, help="Elliptic-curve private key (PEM) to sign with; it never leaves here."
    )
    parser.add_argument(
        "--include-mask", action="store_true", help=f"Also sign {MASK_FILE} (only when you will publish it)."
    )
    parser.add_argument(
        "--check", type=Path, metavar="PUBLIC_KEY", help="Verify the new signature with this public key (PEM)."
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``encoderlock sign``; the key's password, if any, is read from ``$ENCODERLOCK_KEY_PASSWORD``."""
    require_signing()
    path = sign_locked(
        args.locked,
        args.key,
        password=os.environ.get(PASSWORD_ENV),
        include_mask=args.include_mask,
        check_with=args.check,  # a signature that fails the check is not left behind
    )
    names = signed_files(args.locked, include_mask=args.include_mask)
    print(f"signed {len(names)} files of {args.locked} into {path}: {', '.join(names)}")
    if args.check is not None:
        print(f"{SIGNATURE_FILE} verifies with {args.check}")
    return 0
