"""The Hub side of a lock: model card and authorization metadata, gated push, verified pull."""

from .card import Authorization, EncoderLockCardData, LockVerificationError, render_model_card, write_model_card
from .locked import LockedEncoder
from .push import load_locked, push_locked_to_hub

__all__ = [
    "Authorization",
    "EncoderLockCardData",
    "LockVerificationError",
    "LockedEncoder",
    "load_locked",
    "push_locked_to_hub",
    "render_model_card",
    "write_model_card",
]
