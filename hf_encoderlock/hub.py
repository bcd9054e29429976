"""Publish locked encoders to the Hugging Face Hub and load them back with their authorization verified.

- :func:`push_locked_to_hub` regenerates the model card of a locked folder (``README.md``, with the ``encoderlock:``
  block and optional gating), creates the repository, gates it when asked and uploads the encoder, its image
  processor, ``encoderlock_config.json`` and the card in one commit.
- :func:`load_locked` downloads (or opens) a locked encoder, checks the SHA-256 of every weight file against the
  card and returns the encoder adapter, its image processor and the parsed :class:`Authorization`.
- :func:`add_push_parser` adds ``encoderlock push FOLDER REPO_ID [--private] [--gated [--manual-approval]]`` to the CLI.

Any Hub-compatible server works: the ``huggingface_hub`` client honours ``HF_ENDPOINT``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .encoders import EncoderAdapter
from .model_card import (
    CARD_FILE,
    NON_MODEL_WEIGHT_FILES,
    Authorization,
    LockVerificationError,
    weight_files,
    write_model_card,
)
from .trainer import LOCK_CONFIG_FILE, MASK_FILE

if TYPE_CHECKING:
    from .trainer import EncoderLockTrainer

DEFAULT_COMMIT_MESSAGE = "Upload locked encoder (hf_encoderlock)"
GATING_MODES = ("auto", "manual")
PUSH_IGNORE_PATTERNS = ("*/*", ".*", *NON_MODEL_WEIGHT_FILES)  # top-level files only; no mask, no training state

__all__ = [
    "Authorization",
    "LockVerificationError",
    "add_push_parser",
    "load_locked",
    "push_locked_to_hub",
    "push_trainer_to_hub",
    "run_push",
]


def _gating_mode(gated: bool | str) -> str | None:
    if gated is False or gated is None:
        return None
    if gated is True:
        return "auto"
    if gated not in GATING_MODES:
        raise ValueError(f"gated must be True, False or one of {GATING_MODES}, got {gated!r}")
    return str(gated)


def _check_locked_folder(folder: Path) -> None:
    missing = [name for name in ("config.json", LOCK_CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a locked encoder folder: {', '.join(missing)} missing")
    if not weight_files(folder):
        raise FileNotFoundError(f"{folder} holds no weight file")


def push_locked_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    gated: bool | str = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    revision: str | None = None,
    report: dict[str, Any] | None = None,
    include_mask: bool = False,
) -> Any:
    """Push a locked encoder folder to ``repo_id``; returns the ``CommitInfo``.

    The card is rendered again first (with this ``repo_id`` and the gating choice) so that it always matches the
    weights being uploaded. ``gated`` is ``True`` (= ``"auto"``), ``"auto"``, ``"manual"`` or ``False``; the gate is
    set before any file is uploaded. The lock's mask (which weights changed) stays local unless ``include_mask``.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    _check_locked_folder(folder)
    mode = _gating_mode(gated)
    write_model_card(folder, report=report, repo_id=repo_id, gated=mode is not None)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if mode is not None:
        api.update_repo_settings(repo_id, gated=mode, repo_type="model")
    ignore = [p for p in PUSH_IGNORE_PATTERNS if not (include_mask and p == MASK_FILE)]
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=ignore,
    )


def push_trainer_to_hub(
    trainer: "EncoderLockTrainer",
    commit_message: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    *,
    repo_id: str | None = None,
    gated: bool | str = False,
    report: dict[str, Any] | None = None,
    include_mask: bool = False,
) -> Any:
    """What :meth:`EncoderLockTrainer.push_to_hub` does: save the locked encoder, then push it (main process only).

    ``repo_id`` defaults to ``args.hub_model_id``, then to the output folder's name; ``private`` and ``token`` default
    to ``args.hub_private_repo`` and ``args.hub_token``.
    """
    args = trainer.args
    trainer.save_model(args.output_dir)  # every process: saving may synchronise them
    if not trainer.is_world_process_zero():
        return None
    return push_locked_to_hub(
        args.output_dir,
        repo_id or args.hub_model_id or Path(args.output_dir).resolve().name,
        private=private if private is not None else args.hub_private_repo,
        gated=gated,
        token=token or args.hub_token,
        commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
        revision=revision,
        report=report,
        include_mask=include_mask,
    )


def load_locked(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    token: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    pooling: str = "auto",
) -> tuple[EncoderAdapter, Any, Authorization]:
    """``(encoder adapter, image processor, Authorization)`` of a locked encoder on the Hub or in a folder.

    The weights are loaded only after every weight file's SHA-256 matches the card's ``encoderlock:`` block;
    :class:`LockVerificationError` otherwise (also when the card or the block is missing).
    """
    local = Path(repo_id_or_path)
    if local.is_dir():
        folder = local
    else:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                str(repo_id_or_path), revision=revision, token=token, cache_dir=cache_dir, repo_type="model"
            )
        )
    authorization = Authorization.from_card(folder / CARD_FILE)
    authorization.verify(folder)
    adapter = EncoderAdapter.from_pretrained(folder, pooling=pooling)
    adapter.name = str(repo_id_or_path)
    return adapter, adapter.image_processor, authorization


# ------------------------------------------------------------------------------------------------------ CLI
def add_push_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``push`` to the ``encoderlock`` sub-commands (``args.handler`` is :func:`run_push`)."""
    parser = subparsers.add_parser(
        "push",
        help="Push a locked encoder folder (weights, processor, lock config, model card) to the Hugging Face Hub.",
        description="Regenerate the model card of a locked encoder folder and upload the folder to a Hub repository.",
    )
    parser.add_argument("folder", help="A locked encoder folder (written by EncoderLockTrainer.save_model).")
    parser.add_argument("repo_id", help="Target repository, e.g. user/vit-locked.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument(
        "--gated", action="store_true", help="Gate access: requesters must acknowledge the prohibited uses first."
    )
    parser.add_argument(
        "--manual-approval", action="store_true", help="Gate access, the owner approving each request by hand (implies --gated)."
    )
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token or HF_TOKEN).")
    parser.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE, help="Commit message.")
    parser.add_argument("--report", default=None, help="report.json with probe results (default: found next to FOLDER).")
    parser.add_argument("--include-mask", action="store_true", help=f"Also upload {MASK_FILE} (kept local by default).")
    parser.set_defaults(handler=run_push)
    return parser


def run_push(args: argparse.Namespace) -> int:
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
    )
    print(f"pushed {args.folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0

