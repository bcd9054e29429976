"""Audit a locked encoder folder: what changed, does it match its mask, config and card, and does the lock hold.

Checks, each recorded in :class:`AuditReport` (``problems`` lists every failed check):

1. weights: entries that differ bitwise from the original encoder (count, fraction, per tensor);
2. mask: every mask tensor has exactly its weight's shape, and every changed entry lies inside
   ``encoderlock_mask.safetensors`` (when present, or given);
3. config: the mask count in ``encoderlock_config.json`` equals the mask file's count;
4. card: the SHA-256 of every published file matches the model card's ``encoderlock:`` block, which agrees with
   ``encoderlock_config.json``;
5. declared: the changed count (and the mask's) is at most the count the config and the card declare and the
   budget ``rounds x weights_per_round``; without a mask (a pulled lock keeps none), each changed tensor must be
   one the config declares masked weights in, with at most that many changes, and a candidate weight of the lock
   (``candidate_blocks``, module types and name patterns);
6. probes: the probe suite rerun on the locked encoder (and its random twin) on the lock's domains;
7. tell-tale weights: per weight tensor, the entries beyond ``OUTLIER_Z`` robust standard deviations of its median
   (what an attacker's data-free sanitiser resets), against the original's; a tensor with more than twice the
   original's count is named in a note (a weak lock, not a dishonest one: it does not fail the audit).

A declaration the checks rely on that is missing (the lock config, its mask count, budget, candidate blocks, and,
without a mask, its per-tensor counts) fails the audit; so does an encoder with more than ``MAX_CHANGED_FRACTION`` of
its entries changed. What could not be checked (the changed weights, without the original) is listed in
``AuditReport.unchecked`` and makes the result ``INCOMPLETE``, never ``OK``.

An audit that cannot run as asked (the original missing or of another architecture, an unreadable mask) raises
:class:`AuditError` with a one-line message; ``encoderlock audit`` exits 2 for it and 1 when a check fails.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel

from ._files import (
    AUDIT_JSON,
    AUDIT_MD,
    CARD_FILE,
    LOCK_CONFIG_FILE,
    MASK_FILE,
    MODEL_CONFIG_FILE,
    PLAIN_MODULE_CONFIG_FILE,
)
from ._utils import finite, markdown_row, percent
from .data.domains import BUILTIN_DOMAINS, DomainSpec
from .encoders import NO_REMOTE_CODE, load_encoder
from .hub.authorization import Authorization, LockVerificationError
from .hub.public_names import domain_display_name
from .lock.masking import bit_view
from .lock.selection import block_index, load_mask, select_candidate_parameters
from .probing.probe_report import TWIN_ROLE
from .probing.sanitize import count_outliers, count_piled_up, telltale
from .probing.suite import ProbeConfig, run_probe_suite
from .victim import load_victim

VICTIM = "victim"
PREVIEW = 3  # tensor names a one-line message lists before "..."
# A lock changes a sparse set of weights; an encoder with more of its entries changed than this is not a lock of the
# original, whatever its files declare.
MAX_CHANGED_FRACTION = 0.1
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "user/name": may be a Hub id


class AuditError(ValueError):
    """The audit cannot run as asked: the original is missing or has another architecture, the mask is unreadable.

    The message is one line; ``encoderlock audit`` prints it and exits with status 2 (1 is for failed checks).
    """


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _preview(names: Sequence[str]) -> str:
    return ", ".join(names[:PREVIEW]) + (", ..." if len(names) > PREVIEW else "")


# ---------------------------------------------------------------------------------------------------- loading
def load_backbone(source: str | os.PathLike | torch.nn.Module) -> torch.nn.Module:
    """The backbone module of a folder, ``"victim"``, a Hub id, an adapter or a module.

    A transformers checkpoint is loaded without its image processor (only probing needs one)."""
    if isinstance(source, torch.nn.Module):
        return getattr(source, "backbone", source)
    if str(source) == VICTIM:
        return load_backbone(load_victim())
    if (Path(source).expanduser() / PLAIN_MODULE_CONFIG_FILE).is_file():
        return load_encoder(str(source)).backbone  # says what it needs to rebuild a plain module
    return AutoModel.from_pretrained(str(source), **NO_REMOTE_CODE).eval()


def initialised_on_load(source: str | os.PathLike, loaded: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensors of ``source``'s backbone that its checkpoint lacks (a ``pooler`` the model class adds): loading
    initialises them at random, so a second load under another seed disagrees with ``loaded`` on them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch.initial_seed() + 1)
        again = state_of(load_backbone(source))
    return sorted(n for n in loaded if n in again and not torch.equal(loaded[n], again[n]))


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict, detached and on the CPU."""
    return {n: t.detach().cpu() for n, t in module.state_dict().items()}


def _load(source: str | os.PathLike | torch.nn.Module, role: str) -> torch.nn.Module:
    """``load_backbone(source)``, any failure turned into a one-line :class:`AuditError` naming ``role``."""
    if isinstance(source, (str, os.PathLike)) and str(source) != VICTIM and not Path(source).expanduser().exists():
        if not _HUB_NAME.match(str(source)):  # a path, not a Hub id: nothing to download either
            raise AuditError(f"the {role} encoder {str(source)!r} does not exist")
    try:
        return load_backbone(source)
    except Exception as error:  # transformers, the Hub client, a bad config: all user errors here
        raise AuditError(f"cannot load the {role} encoder {str(source)!r}: {_one_line(error)}") from error


def read_mask(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The mask at ``path``; :class:`AuditError` (one line) when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"no mask file at {path}")
    try:
        return load_mask(path)
    except Exception as error:  # not safetensors, truncated, unreadable
        raise AuditError(f"cannot read the mask {path}: {_one_line(error)}") from error


def _read_lock_config(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = folder / LOCK_CONFIG_FILE
    if not path.is_file():
        return None, []
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, [f"{LOCK_CONFIG_FILE} cannot be read: {_one_line(error)}"]
    if not isinstance(lock, dict):
        return None, [f"{LOCK_CONFIG_FILE} is not a JSON object"]
    return lock, []


# ---------------------------------------------------------------------------------------------------- checks
def check_mask(mask: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Every mask tensor names a tensor of ``state`` and has exactly its shape (a mask that would broadcast, or is
    larger, covers entries the lock never selected)."""
    problems = []
    unknown = sorted(n for n in mask if n not in state)
    if unknown:
        problems.append(f"{MASK_FILE} has {len(unknown)} tensor(s) the encoder does not have: {_preview(unknown)}")
    for name in sorted(n for n in mask if n in state):
        if tuple(mask[name].shape) != tuple(state[name].shape):
            problems.append(
                f"{MASK_FILE}'s {name!r} has shape {tuple(mask[name].shape)}, the weight has {tuple(state[name].shape)}"
            )
    return problems


def compare_weights(
    original: Mapping[str, torch.Tensor], locked: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None
) -> tuple[dict[str, Any], list[str]]:
    """Changed entries per tensor (bitwise) and, with a mask, changed entries outside it (a mask tensor whose shape
    differs from its weight's covers nothing)."""
    problems = [f"tensor {n!r} missing from the locked weights" for n in sorted(set(original) - set(locked))]
    problems += [f"tensor {n!r} not in the original weights" for n in sorted(set(locked) - set(original))]
    per_layer: dict[str, dict[str, int]] = {}
    changed = total = outside = 0
    for name in sorted(set(original) & set(locked)):
        before, after = original[name], locked[name]
        total += before.numel()
        if before.shape != after.shape or before.dtype != after.dtype:
            problems.append(f"tensor {name!r} changed shape or dtype")
            continue
        diff = bit_view(before) != bit_view(after)
        count = int(diff.sum())
        if not count:
            continue
        changed += count
        row = {"changed": count, "size": before.numel()}
        if mask is not None:
            keep = mask.get(name)
            exact = keep is not None and tuple(keep.shape) == tuple(diff.shape)  # never broadcast a mask
            out = int((diff & ~keep.to(torch.bool)).sum()) if exact else count
            row["outside_mask"] = out
            outside += out
        per_layer[name] = row
    summary: dict[str, Any] = {
        "changed": changed,
        "total": total,
        "fraction": changed / total if total else 0.0,
        "per_layer": per_layer,
    }
    if mask is not None:
        summary["outside_mask"] = outside
        summary["subset_of_mask"] = outside == 0
        if outside:
            layers = [n for n, r in per_layer.items() if r.get("outside_mask")]
            problems.append(f"{outside} changed entries lie outside the mask (in {', '.join(layers[:5])})")
        problems += check_mask(mask, original)
    return summary, problems


def architecture_mismatch(original: Mapping[str, torch.Tensor], locked: Mapping[str, torch.Tensor]) -> str | None:
    """One line saying how two state dicts differ in tensor names or shapes; ``None`` when they match."""
    only_original = sorted(set(original) - set(locked))
    only_locked = sorted(set(locked) - set(original))
    reshaped = sorted(n for n in set(original) & set(locked) if tuple(original[n].shape) != tuple(locked[n].shape))
    parts = []
    if only_original:
        parts.append(f"{len(only_original)} tensor(s) only in the original ({_preview(only_original)})")
    if only_locked:
        parts.append(f"{len(only_locked)} only in the locked one ({_preview(only_locked)})")
    if reshaped:
        shapes = [f"{n} {tuple(original[n].shape)} vs {tuple(locked[n].shape)}" for n in reshaped]
        parts.append(f"{len(reshaped)} of another shape ({_preview(shapes)})")
    return "; ".join(parts) or None


def candidate_weights(backbone: torch.nn.Module, hyperparameters: Mapping[str, Any]) -> set[str] | None:
    """Names of the weights the lock could select (as the trainer chose them: ``candidate_blocks``, module types,
    name patterns); ``None`` when the lock config does not record ``candidate_blocks``."""
    if "candidate_blocks" not in hyperparameters:
        return None
    blocks = hyperparameters.get("candidate_blocks")
    choose = dict(
        module_types=tuple(hyperparameters.get("candidate_module_types") or ("Linear", "Conv2d")),
        name_patterns=hyperparameters.get("candidate_name_patterns"),
    )
    try:
        return set(select_candidate_parameters(backbone, block_indices=blocks, **choose))
    except ValueError:
        # the trainer's fallback: a model without numbered blocks takes every candidate weight
        if blocks is None or any(block_index(name) is not None for name, _ in backbone.named_parameters()):
            return set()
        return set(select_candidate_parameters(backbone, block_indices=None, **choose))


def _as_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_declared(
    lock: Mapping[str, Any] | None,
    card_count: int | None,
    mask: Mapping[str, torch.Tensor] | None,
    weights: Mapping[str, Any] | None,
    candidates: set[str] | None,
) -> tuple[dict[str, Any], list[str]]:
    """The changed and masked counts against what the lock config and the card declare and against the budget.

    Without a mask the config's per-tensor counts stand in for it: a changed tensor the config declares no masked
    weight in, or with more changes than declared, fails; so does a change (or a mask entry) outside the lock's
    candidate weights.
    """
    lock = lock or {}
    declared_mask = lock.get("mask") or {}
    hyper = lock.get("hyperparameters") or {}
    declared = _as_count(declared_mask.get("count"))
    per_round = _as_count(hyper.get("weights_per_round"))
    num_rounds = _as_count(hyper.get("num_rounds"))
    rounds = _as_count(lock.get("rounds_completed"))
    rounds = num_rounds if rounds is None else rounds
    budget = per_round * rounds if per_round is not None and rounds is not None else None
    mask_count = None if mask is None else sum(int(m.sum()) for m in mask.values())
    changed = None if weights is None else int(weights["changed"])
    result: dict[str, Any] = {
        "declared_count": declared,
        "card_count": card_count,
        "budget": budget,
        "mask_count": mask_count,
        "changed": changed,
    }
    problems = []
    # What the lock declares is what every count below is checked against: a missing declaration fails (an audit
    # that skipped it would pass a lock that removed its own limits).
    missing = [
        "mask.count (how many weights the lock changed)" if declared is None else None,
        "hyperparameters.weights_per_round" if per_round is None else None,
        "rounds_completed / hyperparameters.num_rounds" if rounds is None else None,
        "hyperparameters.candidate_blocks (which weights the lock may change)"
        if "candidate_blocks" not in hyper
        else None,
        f"mask.per_layer (where the lock changed weights; no {MASK_FILE} stands in for it)"
        if mask is None and not isinstance(declared_mask.get("per_layer"), dict)
        else None,
    ]
    problems += [f"{LOCK_CONFIG_FILE} does not declare {what}: it cannot be checked" for what in missing if what]
    if weights is not None and weights["fraction"] > MAX_CHANGED_FRACTION:
        problems.append(
            f"{100 * weights['fraction']:.1f}% of the encoder's entries changed: a lock changes a sparse set of "
            f"weights (at most {100 * MAX_CHANGED_FRACTION:g}% here), this is another model"
        )
    if rounds is not None and num_rounds is not None and rounds > num_rounds:
        problems.append(f"{LOCK_CONFIG_FILE} says {rounds} rounds completed of num_rounds={num_rounds}")
    if budget is not None:
        counts = [
            (f"{MASK_FILE} holds", mask_count, "masked weights"),
            (f"{LOCK_CONFIG_FILE} declares", declared, "masked weights"),
            ("the card declares", card_count, "masked weights"),
            ("the weights show", changed, "changed entries"),
        ]
        problems += [
            f"{what} {count} {noun}, more than the budget {rounds} rounds x {per_round} weights_per_round = {budget}"
            for what, count, noun in counts
            if count is not None and count > budget
        ]
    if changed is not None:
        for where, limit in ((LOCK_CONFIG_FILE, declared), ("the card", card_count)):
            if limit is not None and changed > limit:
                problems.append(f"{changed} entries changed, more than the {limit} masked weights {where} declares")
    per_layer = declared_mask.get("per_layer")
    changed_layers = (weights or {}).get("per_layer") or {}
    if mask is None and isinstance(per_layer, dict) and weights is not None:
        undeclared = sorted(n for n in changed_layers if n not in per_layer)
        if undeclared:
            count = sum(changed_layers[n]["changed"] for n in undeclared)
            problems.append(
                f"{count} changed entries lie in tensors {LOCK_CONFIG_FILE} declares no masked weight in "
                f"({_preview(undeclared)})"
            )
        problems += [
            f"{changed_layers[n]['changed']} entries of {n!r} changed, {LOCK_CONFIG_FILE} declares {per_layer[n]} "
            "masked there"
            for n in sorted(changed_layers)
            if n in per_layer and _as_count(per_layer[n]) is not None and changed_layers[n]["changed"] > per_layer[n]
        ]
    if candidates is not None:
        touched = set(changed_layers) | {n for n, m in (mask or {}).items() if bool(m.any())}
        outside = sorted(touched - candidates)
        result["outside_candidates"] = outside
        if outside:
            problems.append(
                f"changed or masked entries in {len(outside)} tensor(s) outside the lock's candidate weights "
                f"(candidate_blocks={hyper.get('candidate_blocks')}): {_preview(outside)}"
            )
    return result, problems


def check_config(folder: Path, mask: Mapping[str, torch.Tensor] | None) -> tuple[dict[str, Any] | None, list[str]]:
    """The lock config's declared mask count (and per-layer counts) against the mask file."""
    lock, problems = _read_lock_config(folder)
    if lock is None:
        return None, problems
    declared = (lock.get("mask") or {}).get("count")
    result: dict[str, Any] = {
        "declared_mask_count": declared,
        "authorized": lock.get("authorized", []),
        "prohibited": lock.get("prohibited", []),
        "variant": lock.get("variant"),
    }
    if mask is not None:
        actual = sum(int(m.sum()) for m in mask.values())
        result["mask_file_count"] = actual
        result["matches_mask"] = declared == actual
        if declared != actual:
            problems.append(f"{LOCK_CONFIG_FILE} declares {declared} masked weights, {MASK_FILE} holds {actual}")
        per_layer = (lock.get("mask") or {}).get("per_layer")
        if isinstance(per_layer, dict):
            actual_layers = {n: int(m.sum()) for n, m in mask.items() if int(m.sum())}
            if {k: int(v) for k, v in per_layer.items()} != actual_layers:
                problems.append(f"{LOCK_CONFIG_FILE}'s per-layer mask counts differ from {MASK_FILE}")
    return result, problems


def check_card(folder: Path, mask_count: int | None) -> tuple[dict[str, Any], list[str]]:
    """Verify the file hashes, the agreement with ``encoderlock_config.json`` and the mask count of the card."""
    try:
        authorization = Authorization.from_card(folder / CARD_FILE)
        authorization.verify(folder)
    except LockVerificationError as error:
        return {"verified": False, "error": str(error)}, [f"model card: {error}"]
    result = {
        "verified": True,
        "authorized": list(authorization.authorized),
        "prohibited": list(authorization.prohibited),
        "mask_count": authorization.mask_count,
    }
    if mask_count is not None and authorization.mask_count is not None and authorization.mask_count != mask_count:
        result["verified"] = False
        return result, [f"the card declares {authorization.mask_count} masked weights, {MASK_FILE} holds {mask_count}"]
    return result, []


def default_domains(config: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """The lock config's authorized and prohibited domains that are built-in names (others cannot be reloaded)."""

    def builtin(entries) -> list[str]:
        names = []
        for entry in entries or []:
            try:
                name = (
                    DomainSpec(**entry).display_name if isinstance(entry, dict) else DomainSpec(str(entry)).display_name
                )
            except Exception:
                continue
            if name in BUILTIN_DOMAINS:
                names.append(name)
        return names

    config = config or {}
    return builtin(config.get("authorized")), builtin(config.get("prohibited"))


OUTLIER_Z = 6.0  # robust standard deviations beyond which an entry is a tell-tale outlier (check 7)


def check_outliers(locked: torch.nn.Module, original: torch.nn.Module | None) -> tuple[dict[str, Any], list[str]]:
    """Check 7: per weight tensor, entries beyond ``OUTLIER_Z`` robust std in the locked encoder (and the original),
    and entries piled up on one value (:func:`~hf_encoderlock.probing.sanitize.piled_up`: what clamping a bounded
    lock's updates leaves); the notes name the tensors with more than twice the original's count of either (every
    tensor with any, without one)."""
    locked_counts = count_outliers(locked, OUTLIER_Z)
    original_counts = count_outliers(original, OUTLIER_Z) if original is not None else None
    flagged = telltale(locked_counts, original_counts)
    locked_piled = count_piled_up(locked)
    original_piled = count_piled_up(original) if original is not None else None
    piled_flagged = telltale(locked_piled, original_piled)
    summary = {
        "z": OUTLIER_Z,
        "locked": sum(locked_counts.values()),
        "original": sum(original_counts.values()) if original_counts is not None else None,
        "flagged": {name: [locked_counts[name], (original_counts or {}).get(name)] for name in flagged},
        "piled_up": {
            "locked": sum(locked_piled.values()),
            "original": sum(original_piled.values()) if original_piled is not None else None,
            "flagged": {name: [locked_piled[name], (original_piled or {}).get(name)] for name in piled_flagged},
        },
    }
    notes = []
    if flagged and original_counts is not None:
        notes.append(
            f"tell-tale weights: {len(flagged)} tensor(s) hold more than twice the original's entries beyond "
            f"{OUTLIER_Z:g} robust std ({summary['locked']} in all against {summary['original']}): a data-free "
            f"outlier reset may undo this lock (docs/THREAT_MODEL.md); e.g. {_preview(flagged)}"
        )
    elif flagged:
        notes.append(
            f"{summary['locked']} entries in {len(flagged)} tensor(s) lie beyond {OUTLIER_Z:g} robust std of their "
            "tensor's median (without the original, they cannot be told from natural outliers)"
        )
    if piled_flagged:
        against = "" if original_piled is None else f" (the original: {summary['piled_up']['original']})"
        notes.append(
            f"tell-tale weights: {summary['piled_up']['locked']} entries in {len(piled_flagged)} tensor(s){against} "
            "sit on values their tensor holds far more often than its others, as clamping a bounded lock's updates "
            f"leaves them: they show an attacker part of the mask without data (docs/THREAT_MODEL.md); e.g. "
            f"{_preview(piled_flagged)}"
        )
    return summary, notes


# ---------------------------------------------------------------------------------------------------- report
@dataclass
class AuditReport:
    """The result of :func:`audit_locked`; ``ok`` is True when no check failed."""

    locked: str
    original: str | None
    weights: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    card: dict[str, Any] | None = None
    declared: dict[str, Any] | None = None
    probes: dict[str, Any] | None = None
    outliers: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed and none that decides whether the lock is what it claims was skipped."""
        return not self.problems and not self.unchecked

    @property
    def result(self) -> str:
        """``"OK"``, ``"PROBLEMS FOUND"`` or ``"INCOMPLETE"`` (nothing failed, but something could not be checked)."""
        if self.problems:
            return "PROBLEMS FOUND"
        return "INCOMPLETE" if self.unchecked else "OK"

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), ok=self.ok, result=self.result)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(finite(self.to_dict()), indent=2, default=str)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_markdown(self) -> str:
        lines = [f"# Audit: {self.locked}", "", f"**Result: {self.result}**", ""]
        lines += [f"- problem: {p}" for p in self.problems]
        lines += [f"- not checked: {u}" for u in self.unchecked] + [f"- note: {n}" for n in self.notes]
        if self.weights is not None:
            w = self.weights
            lines += [
                "",
                f"## Changed weights (vs {self.original})",
                "",
                f"{w['changed']:,} of {w['total']:,} entries changed ({100 * w['fraction']:.4f}%)"
                + (f"; {w['outside_mask']} outside the mask." if "outside_mask" in w else "."),
                "",
            ]
            lines += [markdown_row(["Tensor", "Changed", "Size", "Outside mask"]), markdown_row(["---"] * 4)]
            lines += [
                markdown_row([n, str(r["changed"]), str(r["size"]), str(r.get("outside_mask", "-"))])
                for n, r in w["per_layer"].items()
            ]
        if self.mask is not None:
            lines += [
                "",
                "## Mask",
                "",
                f"{MASK_FILE}: {self.mask['count']:,} entries in {self.mask['layers']} tensor(s).",
            ]
        if self.config is not None:
            lines += [
                "",
                "## Lock config",
                "",
                f"Declared mask count: {self.config.get('declared_mask_count')}; "
                f"matches the mask file: {self.config.get('matches_mask', 'n/a')}.",
            ]
        if self.card is not None:
            lines += [
                "",
                "## Model card",
                "",
                "File hashes verified."
                if self.card["verified"]
                else f"Not verified: {self.card.get('error', 'mask count differs')}",
            ]
        if self.declared is not None:
            d = self.declared
            lines += [
                "",
                "## Declared counts",
                "",
                f"Changed: {d.get('changed', 'n/a')}; mask file: {d.get('mask_count', 'n/a')}; "
                f"{LOCK_CONFIG_FILE}: {d.get('declared_count', 'n/a')}; card: {d.get('card_count', 'n/a')}; "
                f"budget (rounds x weights_per_round): {d.get('budget', 'n/a')}.",
            ]
        if self.probes is not None:
            lines += [
                "",
                "## Probes (attacker's best test accuracy, %)",
                "",
                markdown_row(["Domain", "Role", "Fraction", "Locked", "Random twin"]),
                markdown_row(["---"] * 5),
            ]
            for row in self.probes["best"]:
                lines.append(
                    markdown_row(
                        [
                            row["domain"],
                            row["role"] or "-",
                            f"{100 * row['fraction']:g}%",
                            percent(row["locked"], suffix=""),
                            percent(row.get("random_twin"), suffix=""),
                        ]
                    )
                )
        return "\n".join(lines) + "\n"

    def save(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / AUDIT_JSON, "markdown": folder / AUDIT_MD}
        self.to_json(paths["json"])
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def _probe_summary(report, authorized: Sequence[str], prohibited: Sequence[str]) -> dict[str, Any]:
    rows = []
    for best in report.best_scores():
        role = "authorized" if best.domain in authorized else "prohibited" if best.domain in prohibited else None
        row = {"domain": best.domain, "role": role, "fraction": best.fraction, "locked": best.mean}
        if report.select(TWIN_ROLE, best.domain, best.fraction):
            row["random_twin"] = report.best(best.domain, best.fraction, TWIN_ROLE).mean
        rows.append(row)
    return {"best": rows, "config": report.config}


def audit_locked(
    locked: str | os.PathLike,
    original: str | os.PathLike | torch.nn.Module | None = None,
    domains: Sequence[Any] | Mapping[str, Any] | None = None,
    probe_config: Any | None = None,
    probes: bool = True,
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
) -> AuditReport:
    """Audit the locked folder ``locked`` (see the module docstring).

    Raises :class:`AuditError` (one line) when the audit cannot run as asked: ``original`` or ``mask`` missing or
    unreadable, or ``original`` of another architecture than a lock whose files match its card (files that do not
    are a failed check instead).

    Args:
        original: the encoder before locking (folder, ``"victim"``, Hub id or module); ``None`` skips the weight diff.
        mask: the lock's mask file (default: ``encoderlock_mask.safetensors`` in ``locked`` when present; a
            pulled lock has none, the owner keeps it).
        domains: domains to probe; default: the built-in authorized/prohibited domains of the lock config.
        probe_config: a :class:`hf_encoderlock.probing.suite.ProbeConfig` (default settings when ``None``).
        probes: rerun the probe suite (slow); ``False`` checks files only.
        output_dir: if given, ``audit.json`` and ``audit.md`` (and the probe report) are written there.
    """
    folder = Path(locked)
    if not (folder / MODEL_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a saved encoder folder (no config.json)")
    report = AuditReport(
        locked=str(folder), original=None if original is None else str(getattr(original, "name", original))
    )
    mask_path = Path(mask) if mask is not None else folder / MASK_FILE
    mask = read_mask(mask_path) if mask is not None or mask_path.is_file() else None
    original_module = _load(original, "original") if original is not None else None
    mask_count = None
    if mask is not None:
        mask_count = sum(int(m.sum()) for m in mask.values())
        report.mask = {"count": mask_count, "layers": sum(1 for m in mask.values() if m.any())}
    else:
        report.notes.append(
            f"no {MASK_FILE}: changes are checked against the counts {LOCK_CONFIG_FILE} declares instead"
        )
    report.config, problems = check_config(folder, mask)
    report.problems += problems
    if report.config is None and not problems:
        report.problems.append(f"no {LOCK_CONFIG_FILE}: nothing declares what the lock changed")
    report.card, problems = check_card(folder, mask_count)
    report.problems += problems
    lock, _ = _read_lock_config(folder)
    locked_module = _load(folder, "locked") if original_module is not None or mask is not None else None
    if original_module is not None and locked_module is not None:
        original_state, locked_state = state_of(original_module), state_of(locked_module)
        mismatch = architecture_mismatch(original_state, locked_state)
        if mismatch is not None:
            line = f"the original encoder ({report.original}) and the locked one differ in architecture: {mismatch}"
            if report.card["verified"]:  # the lock is what its card says: the wrong original was given
                raise AuditError(line)
            report.problems.append(line)  # files that do not match their card: a tampered lock
        else:
            absent = initialised_on_load(original, original_state) if not isinstance(original, torch.nn.Module) else []
            if absent:
                report.notes.append(
                    f"{len(absent)} tensor(s) are not in the original checkpoint (initialised at random when it is "
                    f"loaded), so there is no original to compare them with: {_preview(absent)}"
                )
                original_state = {n: t for n, t in original_state.items() if n not in absent}
                locked_state = {n: t for n, t in locked_state.items() if n not in absent}
            report.weights, problems = compare_weights(original_state, locked_state, mask)
            report.weights["not_in_original"] = absent
            report.problems += problems
    else:
        report.unchecked.append(
            "which weights changed: no original encoder given (--original), so a model changed everywhere cannot "
            "be told from its lock"
        )
        if mask is not None and locked_module is not None:
            report.problems += check_mask(mask, state_of(locked_module))
    candidates = None
    module = original_module if original_module is not None else locked_module
    if lock is not None and module is not None:
        candidates = candidate_weights(module, lock.get("hyperparameters") or {})
        if candidates is None:  # check_declared names the missing declaration as a failed check
            report.notes.append(f"{LOCK_CONFIG_FILE} records no candidate_blocks: the candidate check is skipped")
    if lock is not None:
        report.declared, problems = check_declared(
            lock, report.card.get("mask_count"), mask, report.weights, candidates
        )
        report.problems += problems
    if locked_module is None:
        locked_module = _load(folder, "locked")
    if locked_module is not None:
        report.outliers, notes = check_outliers(locked_module, original_module)
        report.notes += notes
    authorized, prohibited = default_domains(report.config)
    if probes:
        if domains is None:
            domains = authorized + prohibited
            if not domains:
                report.notes.append("no built-in domains in the lock config and none given: probes skipped")
        if domains:
            probe_report = run_probe_suite(
                load_encoder(str(folder)), domains, probe_config or ProbeConfig(), random_twin=True, cache_dir=cache_dir
            )
            declared_a = authorized or _names((report.config or {}).get("authorized"))
            declared_p = prohibited or _names((report.config or {}).get("prohibited"))
            report.probes = _probe_summary(probe_report, declared_a, declared_p)
            if output_dir is not None:
                probe_report.save(output_dir)
    if output_dir is not None:
        report.save(output_dir)
    return report


def _names(entries) -> list[str]:
    return [domain_display_name(e) for e in entries or []]
