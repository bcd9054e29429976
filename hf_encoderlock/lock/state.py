"""``LockState``: everything a lock run carries from one step to the next, and its checkpoint files.

In the spirit of ``transformers.TrainerState``: the trainer holds one :class:`LockState`; a checkpoint writes it
(:meth:`LockState.save`) and a resumed run reads it back (:meth:`LockState.load`), so an exact resume needs
nothing else beyond the encoder weights, optimizer, scheduler and RNG states the Trainer saves itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.trainer_pt_utils import safe_globals

from .._files import (
    CHECKPOINT_PREFIX,
    LOCK_CONFIG_FILE,
    LOCK_STATE_FILE,
    LOCK_STATE_FORMAT,
    LOCK_TENSORS_FILE,
    MASK_FILE,
    MODEL_WEIGHTS_FILE,
    MODEL_WEIGHTS_INDEX_FILE,
    TRAINER_STATE_FILE,
    TRAINER_STATE_FILES,
)
from ..probing.heads import head_from_layout, head_layout
from ..probing.learned_transforms import ColourMap
from .objectives import LockHeads
from .projection import AuthorizedProjection
from .selection import load_mask, save_mask

HEAD_ROLES = ("authorized", "adversary")
HEAD_KEYS = ("heads", "stale_heads", "best_heads", "best_stale_heads")  # the LockHeads fields, saved in this order
VIEW_GENERATOR_KEY = "view_generator.state"  # in LOCK_TENSORS_FILE: the views' generator state (uint8)
COLOUR_MAP_PREFIX = "colour_map."  # in LOCK_TENSORS_FILE: the colour map's parameters and buffers
MASK_NAME_PREFIX = "backbone."  # in memory masks name EncoderAdapter parameters; the mask file names AutoModel weights

logger = logging.getLogger(__name__)


def _phase_time() -> dict[str, float]:
    # "reference": the frozen encoder's features of authorized lock images, computed once per block during updates
    return {"selection": 0.0, "update": 0.0, "challenge": 0.0, "reference": 0.0}


@dataclass
class LockState:
    """The running state of a lock: mask, heads, best encoder, challenge bookkeeping, objective state, history."""

    #: OR-accumulated mask of selected weight entries (EncoderAdapter parameter name -> bool tensor).
    mask: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Rounds whose selection is in ``mask``.
    rounds_completed: int = 0
    #: Heads the updates train against (from the latest self-challenge).
    heads: LockHeads | None = None
    #: After the best encoder is restored: the heads its updates trained against (fitted before those updates).
    stale_heads: LockHeads | None = None
    #: Fresh heads of the best encoder so far, and the heads in use while its updates ran.
    best_heads: LockHeads | None = None
    best_stale_heads: LockHeads | None = None
    #: Candidate weights of the best encoder so far (``None`` until a locked encoder was challenged).
    best_state: dict[str, torch.Tensor] | None = None
    best_gap: float = -float("inf")
    best_round: int | None = None
    #: Validation accuracy of the installed adversary head on the prohibited validation split.
    adversary_val_accuracy: float = 0.0
    last_challenge_round: int | None = None
    #: ``objective.state_dict()`` as of the last save or load (``None``: not captured, e.g. a legacy checkpoint).
    objective: dict[str, Any] | None = None
    #: ``authorized_projection='auto'`` found no room for the prohibited gradient at the first round: the lock runs
    #: unprojected (decided once, so a resumed run keeps the decision).
    projection_dropped: bool = False
    #: ``colour_map_every``: the colour map fitted at the latest refit, under which half of every prohibited batch is
    #: shown (``None``: off, or not fitted yet).
    colour_map: ColourMap | None = field(default=None, repr=False, compare=False)
    #: Per-round figures, in the order they were recorded.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds spent in selection, masked updates and challenges.
    phase_time: dict[str, float] = field(default_factory=_phase_time)
    #: The objective's logged terms of the latest update (merged into the next ``loss`` log).
    last_logs: dict[str, float] = field(default_factory=dict)
    #: The generator of the augmented views (``uses_views`` objectives), saved with its position so that a resumed
    #: run draws the views the uninterrupted one would (``None``: the trainer seeds its own).
    view_generator: torch.Generator | None = field(default=None, repr=False, compare=False)

    # Derived state, never saved: a resumed run rebuilds each from the unlocked encoder, the mask and the lock data,
    # to the same bits (the projection at the mask's first install, the reference features block by block as batches
    # first need them), and the two per-step fields live between the two halves of one optimiser step, where no
    # checkpoint is taken.
    #: The authorized projection of the mask's rows (``authorized_projection``; ``None``: unprojected or not built).
    projection: AuthorizedProjection | None = field(default=None, repr=False, compare=False)
    #: The unlocked encoder's features per authorized lock image, and which blocks of rows are filled.
    reference_cache: torch.Tensor | None = field(default=None, repr=False, compare=False)
    reference_known: torch.Tensor | None = field(default=None, repr=False, compare=False)
    #: Within one optimiser step: the projected weights before it, and the scheduler's rates while a repair, guarded
    #: or unprojected step runs at its own.
    weights_before_step: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    scheduled_lrs: list[float] | None = field(default=None, repr=False, compare=False)

    # -------------------------------------------------------------------------------------------------- save
    def save_mask(self, folder: str | Path) -> None:
        """Write the mask alone (``MASK_FILE``, AutoModel weight names): every save has it, not only checkpoints."""
        save_mask({k.removeprefix(MASK_NAME_PREFIX): v for k, v in self.mask.items()}, Path(folder) / MASK_FILE)

    def save(self, folder: str | Path) -> None:
        """Write the whole state into ``folder``: the mask, ``LOCK_STATE_FILE`` (JSON) and ``LOCK_TENSORS_FILE``
        (heads as layouts + weights, no pickles; the best encoder's candidate weights)."""
        folder = Path(folder)
        self.save_mask(folder)
        layouts: dict[str, list[str]] = {}
        tensors: dict[str, torch.Tensor] = {}
        for key in HEAD_KEYS:
            heads = getattr(self, key)
            for role in HEAD_ROLES if heads is not None else ():
                module = getattr(heads, role)
                layouts[f"{key}.{role}"] = head_layout(module)
                tensors.update({f"{key}.{role}.{n}": t.detach().cpu().clone() for n, t in module.state_dict().items()})
        for name, value in (self.best_state or {}).items():
            tensors[f"best_state.{name}"] = value.detach().cpu().clone()
        if self.view_generator is not None:
            tensors[VIEW_GENERATOR_KEY] = self.view_generator.get_state()
        if self.colour_map is not None:
            tensors.update(
                {f"{COLOUR_MAP_PREFIX}{n}": t.detach().cpu().clone() for n, t in self.colour_map.state_dict().items()}
            )
        info = {
            "format": LOCK_STATE_FORMAT,
            "head_layouts": layouts,
            "has_best_state": self.best_state is not None,
            "rounds_completed": self.rounds_completed,
            "adversary_val_accuracy": self.adversary_val_accuracy,
            "last_challenge_round": self.last_challenge_round,
            "projection_dropped": self.projection_dropped,
            "best_gap": self.best_gap,
            "best_round": self.best_round,
            "objective": self.objective if self.objective is not None else {},
            "history": self.history,
            "phase_time": self.phase_time,
            "last_logs": self.last_logs,
            "colour_map": self.colour_map.layout() if self.colour_map is not None else None,
        }
        (folder / LOCK_STATE_FILE).write_text(json.dumps(info, indent=2, default=str))
        save_file(tensors, str(folder / LOCK_TENSORS_FILE))

    # -------------------------------------------------------------------------------------------------- load
    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device) -> LockState:
        """The state :meth:`save` wrote into ``folder`` (heads and best weights on ``device``, mask on the CPU).

        A folder with a mask but without the state files (a checkpoint written before they existed) gives the mask
        and round count only, with a warning: the heads are refitted and the resumed run is not exact.
        """
        folder = Path(folder)
        mask = {f"{MASK_NAME_PREFIX}{k}": v for k, v in load_mask(folder / MASK_FILE).items()}
        if not (folder / LOCK_STATE_FILE).is_file():
            logger.warning(f"{folder} has no {LOCK_STATE_FILE}: heads are refitted and the resumed run is not exact")
            return cls(mask=mask, rounds_completed=_rounds_in_lock_config(folder))
        info = json.loads((folder / LOCK_STATE_FILE).read_text())
        if info.get("format") != LOCK_STATE_FORMAT:
            raise ValueError(
                f"{folder / LOCK_STATE_FILE}: unknown lock state format {info.get('format')!r} "
                f"(this version reads {LOCK_STATE_FORMAT!r})"
            )
        tensors = load_file(str(folder / LOCK_TENSORS_FILE))
        best_state = None
        if info["has_best_state"]:
            prefix = "best_state."
            best_state = {n.removeprefix(prefix): t.to(device) for n, t in tensors.items() if n.startswith(prefix)}
        view_generator = None
        if VIEW_GENERATOR_KEY in tensors:  # states saved before it was have none: the trainer's seeded one is used
            view_generator = torch.Generator()
            view_generator.set_state(tensors[VIEW_GENERATOR_KEY])
        colour_map = None
        if info.get("colour_map"):  # states saved before colour_map_every existed have none
            state = {
                n.removeprefix(COLOUR_MAP_PREFIX): t for n, t in tensors.items() if n.startswith(COLOUR_MAP_PREFIX)
            }
            colour_map = ColourMap.from_layout(info["colour_map"], state).to(device)
        # states saved before rounds_completed was added to them have it in the lock config only
        rounds = info["rounds_completed"] if "rounds_completed" in info else _rounds_in_lock_config(folder)
        return cls(
            mask=mask,
            rounds_completed=int(rounds),
            **{key: _heads_from(info["head_layouts"], tensors, key, device) for key in HEAD_KEYS},
            best_state=best_state,
            best_gap=float(info["best_gap"]),
            best_round=info["best_round"],
            adversary_val_accuracy=float(info["adversary_val_accuracy"]),
            last_challenge_round=info["last_challenge_round"],
            projection_dropped=bool(info.get("projection_dropped", False)),
            objective=info["objective"],
            history=list(info["history"]),
            phase_time={**_phase_time(), **{k: float(v) for k, v in info["phase_time"].items()}},
            last_logs=dict(info.get("last_logs", {})),
            view_generator=view_generator,
            colour_map=colour_map,
        )


def _rounds_in_lock_config(folder: Path) -> int:
    return int(json.loads((folder / LOCK_CONFIG_FILE).read_text()).get("rounds_completed", 0))


def _heads_from(layouts: dict[str, list[str]], tensors: dict[str, torch.Tensor], key: str, device) -> LockHeads | None:
    """The ``key`` heads rebuilt from their layouts and weights (frozen, on ``device``); ``None`` if not saved."""
    if f"{key}.{HEAD_ROLES[0]}" not in layouts:
        return None
    modules = {}
    for role in HEAD_ROLES:
        prefix = f"{key}.{role}."
        state = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
        modules[role] = head_from_layout(layouts[f"{key}.{role}"], state).requires_grad_(False).to(device)
    return LockHeads(**modules)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why the Trainer checkpoint ``folder`` cannot be resumed from, or ``None`` when every file it needs loads.

    A ``trainer_state.json`` alone does not prove a checkpoint whole: a full disk or a copy cut short can leave a
    truncated weight, mask or optimizer file, or a garbled state JSON, beside it. So every JSON is parsed, every
    safetensors header is checked against its file's size, and every torch file is opened (memory-mapped, so its
    tensors are not read).
    """
    folder = Path(folder)
    state = _json_problem(folder / TRAINER_STATE_FILE, "global_step")
    if state is not None:
        return state
    for name in (LOCK_STATE_FILE, LOCK_CONFIG_FILE):
        if name == LOCK_STATE_FILE or (folder / name).exists():
            problem = _json_problem(folder / name, "format" if name == LOCK_STATE_FILE else None)
            if problem is not None:
                return problem
    weights = [folder / MODEL_WEIGHTS_FILE]
    index = folder / MODEL_WEIGHTS_INDEX_FILE
    if index.exists() and not weights[0].exists():  # a sharded save
        problem = _json_problem(index, "weight_map")
        if problem is not None:
            return problem
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        weights = [folder / shard for shard in sorted(set(shards))]
    for path in [folder / LOCK_TENSORS_FILE, folder / MASK_FILE, *weights]:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error type, OSError for a missing file
            return f"{path.name} does not load ({error})"
    for pattern in TRAINER_STATE_FILES:
        for path in sorted(folder.glob(pattern)):
            if path.suffix == ".bin":
                continue  # training_args.bin is a pickle the Trainer never reads back
            try:  # as the Trainer reads them: weights only, with the numpy types of its RNG state allowed
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # torch raises RuntimeError, OSError or UnpicklingError by the damage
                return f"{path.name} does not load ({error})"
    return None


def _json_problem(path: Path, required_key: str | None) -> str | None:
    """Why ``path`` is not a JSON object (holding ``required_key``), or ``None``."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as error:
        return f"{path.name} is not valid JSON ({error})"
    if not isinstance(content, dict) or (required_key is not None and required_key not in content):
        return f"{path.name} is not the expected JSON object" + (f" (no {required_key!r})" if required_key else "")
    return None


def checkpoint_is_complete(folder: str | Path) -> bool:
    """Whether every file of the Trainer checkpoint ``folder`` loads (see :func:`checkpoint_problem`)."""
    return checkpoint_problem(folder) is None


def resumable_checkpoint(folder: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The ``checkpoint-N`` under ``folder`` with the highest ``N`` whose files all load, and the newer ones passed
    over, each with its problem (newest first)."""
    numbered = []
    for path in Path(folder).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and suffix.isdigit():
            numbered.append((int(suffix), path))
    skipped = []
    for _, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def checkpoint_to_resume(folder: str | Path) -> tuple[Path, str]:
    """What ``resume_from_checkpoint=True`` resumes from: the newest complete ``checkpoint-N`` under ``folder`` and
    the newer ones passed over, as one line ("" when none); raises ``ValueError`` naming the folder (and each damaged
    checkpoint) when there is none."""
    found, skipped = resumable_checkpoint(folder)
    damaged = "; ".join(f"{path.name}: {problem}" for path, problem in skipped)
    if found is None:
        raise ValueError(
            f"resume_from_checkpoint=True: no complete checkpoint in {folder}"
            + (f" (passed over {damaged})" if damaged else " (checkpoints are kept only with a save_strategy)")
        )
    return found, damaged


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The ``checkpoint-N`` under ``folder`` with the highest ``N`` that is complete (a damaged one is skipped)."""
    return resumable_checkpoint(folder)[0]
