"""Audit a locked encoder folder: what changed, does it match its mask, config and card, and does the lock hold.

Checks, each recorded in :class:`AuditReport` (``problems`` lists every failed check):

1. weights: entries that differ bitwise from the original encoder (count, fraction, per tensor);
2. mask: every changed entry lies inside ``encoderlock_mask.safetensors`` (when present);
3. config: the mask count in ``encoderlock_config.json`` equals the mask file's count;
4. card: the SHA-256 of the weight files matches the model card's ``encoderlock:`` block;
5. probes: the probe suite rerun on the locked encoder (and its random twin) on the lock's domains.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._files import AUDIT_JSON, AUDIT_MD, CARD_FILE, LOCK_CONFIG_FILE, MASK_FILE, MODEL_CONFIG_FILE
from ._utils import finite, markdown_row, percent
from .data.domains import BUILTIN_DOMAINS, DomainSpec
from .encoders import load_encoder
from .hub.card import Authorization, LockVerificationError, _domain_name
from .lock.masking import _bits
from .lock.selection import load_mask
from .probing.probe_report import TWIN_ROLE
from .probing.suite import ProbeConfig, run_probe_suite
from .victim import load_victim

VICTIM = "victim"


# ---------------------------------------------------------------------------------------------------- loading
def load_state(source: str | os.PathLike | torch.nn.Module) -> dict[str, torch.Tensor]:
    """A backbone's in-memory state dict from a folder, ``"victim"``, a Hub id or a module.

    Folders are loaded with ``from_pretrained``, not read as raw safetensors: transformers 5 may store tensors
    under other names than the module's (ViT: ``encoder.layer.N.attention.attention.query`` on disk,
    ``layers.N.attention.q_proj`` in memory), and masks use the in-memory names. Loading copies values exactly.
    """
    if isinstance(source, torch.nn.Module):
        module = getattr(source, "backbone", source)
        return {n: t.detach().cpu() for n, t in module.state_dict().items()}
    if str(source) == VICTIM:
        return load_state(load_victim())

    return load_state(load_encoder(str(source)))


# ---------------------------------------------------------------------------------------------------- checks
def compare_weights(
    original: Mapping[str, torch.Tensor], locked: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None
) -> tuple[dict[str, Any], list[str]]:
    """Changed entries per tensor (bitwise) and, with a mask, changed entries outside it."""
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
        diff = _bits(before) != _bits(after)
        count = int(diff.sum())
        if not count:
            continue
        changed += count
        row = {"changed": count, "size": before.numel()}
        if mask is not None:
            keep = mask.get(name)
            out = count if keep is None else int((diff & ~keep.to(torch.bool)).sum())
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
    return summary, problems


def check_config(folder: Path, mask: Mapping[str, torch.Tensor] | None) -> tuple[dict[str, Any] | None, list[str]]:
    """The lock config's declared mask count (and per-layer counts) against the mask file."""
    path = folder / LOCK_CONFIG_FILE
    if not path.is_file():
        return None, []
    lock = json.loads(path.read_text())
    declared = (lock.get("mask") or {}).get("count")
    result: dict[str, Any] = {
        "declared_mask_count": declared,
        "authorized": lock.get("authorized", []),
        "prohibited": lock.get("prohibited", []),
        "variant": lock.get("variant"),
    }
    problems = []
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
    """Verify the weight hashes (and mask count) declared by the model card."""
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
    probes: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), ok=self.ok)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(finite(self.to_dict()), indent=2, default=str)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_markdown(self) -> str:
        lines = [f"# Audit: {self.locked}", "", f"**Result: {'OK' if self.ok else 'PROBLEMS FOUND'}**", ""]
        lines += [f"- problem: {p}" for p in self.problems] + [f"- note: {n}" for n in self.notes]
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
                "Weight hashes verified."
                if self.card["verified"]
                else f"Not verified: {self.card.get('error', 'mask count differs')}",
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
) -> AuditReport:
    """Audit the locked folder ``locked`` (see the module docstring).

    Args:
        original: the encoder before locking (folder, ``"victim"``, Hub id or module); ``None`` skips the weight diff.
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
    mask = load_mask(folder / MASK_FILE) if (folder / MASK_FILE).is_file() else None
    mask_count = None
    if mask is not None:
        mask_count = sum(int(m.sum()) for m in mask.values())
        report.mask = {"count": mask_count, "layers": sum(1 for m in mask.values() if m.any())}
    else:
        report.notes.append(f"no {MASK_FILE}: the subset check is skipped")
    if original is not None:
        report.weights, problems = compare_weights(load_state(original), load_state(folder), mask)
        report.problems += problems
    else:
        report.notes.append("no original encoder given: the changed-weights check is skipped")
    report.config, problems = check_config(folder, mask)
    report.problems += problems
    if report.config is None:
        report.notes.append(f"no {LOCK_CONFIG_FILE}")
    report.card, problems = check_card(folder, mask_count)
    report.problems += problems
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
    return [_domain_name(e) for e in entries or []]
