"""Lock objectives and their registry: adding one is a module with a :class:`LockObjective` subclass plus a line
in :data:`OBJECTIVES`."""

from __future__ import annotations

from typing import Any

from .base import LockHeads, LockObjective, ObjectiveTerms
from .contrastive import ContrastiveObjective
from .information import InformationObjective, InformationTermsConfig
from .paper import PaperObjective

#: ``objective`` name in :class:`~hf_encoderlock.lock.config.EncoderLockConfig` -> class (``from_config`` builds it).
OBJECTIVES: dict[str, type[LockObjective]] = {
    "paper": PaperObjective,
    "information": InformationObjective,
    "contrastive": ContrastiveObjective,
}

__all__ = [
    "OBJECTIVES",
    "ContrastiveObjective",
    "InformationObjective",
    "InformationTermsConfig",
    "LockHeads",
    "LockObjective",
    "ObjectiveTerms",
    "PaperObjective",
    "build_objective",
]


def build_objective(config: Any) -> LockObjective:
    """The objective named by ``config.objective``, configured from the config's fields."""
    if config.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {config.objective!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[config.objective].from_config(config)
