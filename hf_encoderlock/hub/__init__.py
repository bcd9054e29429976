"""The Hub side of a lock, one module per job.

- :mod:`.manifest`: which files a push publishes (an allow-list) and their SHA-256;
- :mod:`.public_names`: the public names of the lock's domains (no local path is ever published);
- :mod:`.authorization`: what the card authorizes (:class:`Authorization`) and the check of a folder against it;
- :mod:`.card`: the model card, rendered from the lock config and the main job's report;
- :mod:`.signing`: an OpenSSF signature over every published file;
- :mod:`.push`: the gated push and the verified pull; :mod:`.locked`: :class:`LockedEncoder`, a pulled lock.
"""

from .authorization import Authorization, LockVerificationError
from .card import EncoderLockCardData, render_model_card, write_model_card
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
