"""hf_encoderlock: EncoderLock (NDSS 2025, "Probe-Me-Not") for the Hugging Face ecosystem.

Lock a pre-trained vision encoder so that probing it (a fresh head on its frozen features) keeps working on
authorized domains and fails on prohibited ones, while changing only a tiny set of weights.

Names are imported lazily (on first use), so ``import hf_encoderlock`` and the ``encoderlock`` CLI start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# The names a user needs, by job; everything else is imported from its module (hf_encoderlock.lock.selection, ...).
_EXPORTS: dict[str, tuple[str, ...]] = {
    # lock an encoder
    "lock.trainer": ("EncoderLockTrainer",),
    "lock.config": ("EncoderLockConfig",),
    # the main job: victim, lock, probes, attacks and report in one call
    "experiment": ("LockExperimentArguments", "run_lock_experiment"),
    # encoders and data
    "encoders": ("EncoderAdapter", "load_encoder"),
    "victim": ("load_victim",),
    "data.domains": ("load_domain",),
    # measure a lock: fresh probes, the attack suite, the adaptive attacker, the audit of a locked folder
    "probing.suite": ("ProbeConfig", "run_probe_suite"),
    "probing.attacks": ("AttackConfig", "run_attack_suite"),
    "probing.adaptive": ("AdaptiveConfig", "run_adaptive_suite"),
    "audit": ("audit_locked",),
    # publish and use a lock
    "hub.locked": ("LockedEncoder",),
    "hub.push": ("load_locked", "push_locked_to_hub"),
    "hub.card": ("write_model_card",),
    "hub.authorization": ("LockVerificationError",),
    "hub.signing": ("sign_locked", "verify_signature"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_encoderlock' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .audit import audit_locked  # noqa: F401
    from .data.domains import load_domain  # noqa: F401
    from .encoders import EncoderAdapter, load_encoder  # noqa: F401
    from .experiment import LockExperimentArguments, run_lock_experiment  # noqa: F401
    from .hub.authorization import LockVerificationError  # noqa: F401
    from .hub.card import write_model_card  # noqa: F401
    from .hub.locked import LockedEncoder  # noqa: F401
    from .hub.push import load_locked, push_locked_to_hub  # noqa: F401
    from .hub.signing import sign_locked, verify_signature  # noqa: F401
    from .lock.config import EncoderLockConfig  # noqa: F401
    from .lock.trainer import EncoderLockTrainer  # noqa: F401
    from .probing.adaptive import AdaptiveConfig, run_adaptive_suite  # noqa: F401
    from .probing.attacks import AttackConfig, run_attack_suite  # noqa: F401
    from .probing.suite import ProbeConfig, run_probe_suite  # noqa: F401
    from .victim import load_victim  # noqa: F401
