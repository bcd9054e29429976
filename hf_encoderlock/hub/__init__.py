"""The Hub side of a lock: model card and authorization metadata, gated push, verified pull, signed locks."""

from .card import Authorization, EncoderLockCardData, LockVerificationError, render_model_card, write_model_card
from .locked import LockedEncoder
from .push import load_locked, push_locked_to_hub
from .signing import sign_locked, verify_signature

__all__ = [
    "Authorization",
    "EncoderLockCardData",
    "LockVerificationError",
    "LockedEncoder",
    "load_locked",
    "push_locked_to_hub",
    "render_model_card",
    "sign_locked",
    "verify_signature",
    "write_model_card",
]
