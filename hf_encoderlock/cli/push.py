"""``encoderlock push``: upload a locked encoder folder (not its mask, unless asked) to the Hub."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .._files import MASK_FILE, SIGNATURE_FILE
from ..hub.push import DEFAULT_COMMIT_MESSAGE, push_locked_to_hub
from .sign import PASSWORD_ENV

USER_ERRORS = (ImportError,)  # --sign-key without the [signing] extra: one line, exit 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``encoderlock push``."""
    parser.add_argument("folder", help="A locked encoder folder (written by EncoderLockTrainer.save_model).")
    parser.add_argument("repo_id", help="Target repository, e.g. user/vit-locked.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument(
        "--gated", action="store_true", help="Gate access: requesters must acknowledge the prohibited uses first."
    )
    parser.add_argument(
        "--manual-approval",
        action="store_true",
        help="Gate access, the owner approving each request by hand (implies --gated).",
    )
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token or HF_TOKEN).")
    parser.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE, help="Commit message.")
    parser.add_argument(
        "--report", default=None, help="report.json with probe results (default: found next to FOLDER)."
    )
    parser.add_argument("--include-mask", action="store_true", help=f"Also upload {MASK_FILE} (kept local by default).")
    parser.add_argument("--license", default=None, help="License id for the model card (e.g. apache-2.0, other).")
    parser.add_argument(
        "--base-model",
        default=None,
        help="Name this Hub id as the card's base_model (not named by default: it points to the unlocked weights).",
    )
    parser.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        help="Sign every uploaded file, the new card included, with this elliptic-curve private key (PEM) into "
        f"{SIGNATURE_FILE}; the key's password, if any, is read from ${PASSWORD_ENV}.",
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``encoderlock push``."""
    report = json.loads(Path(args.report).read_text()) if args.report else None
    info = push_locked_to_hub(
        args.folder,
        args.repo_id,
        private=args.private or None,
        gated="manual" if args.manual_approval else ("auto" if args.gated else False),
        token=args.token,
        commit_message=args.commit_message,
        revision=args.revision,
        report=report,
        include_mask=args.include_mask,
        license=args.license,
        sign_key=args.sign_key,
        sign_password=os.environ.get(PASSWORD_ENV) if args.sign_key else None,
        base_model=args.base_model,
    )
    print(f"pushed {args.folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0
