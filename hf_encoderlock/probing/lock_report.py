"""The lock report: random-init twin, victim, locked encoder under fresh probes, and the lock's own head.

The lock's strength is what a fresh, strong probe still gets on images the lock never used, against the random-init
twin (the attacker's no-encoder baseline). The accuracy of the head the lock trained against is shown beside it
only to expose the gap: it is never the lock's strength.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._utils import as_finite_float, markdown_row, optional_import, percent
from .adaptive import AdaptiveReport, adaptive_table_markdown
from .probe_report import ENCODER_ROLE, ProbeReport, lock_measures

HOLD_THRESHOLD = 0.9  # advantage removed at 100% data above which the report says the lock holds
KEEP_THRESHOLD = 0.95  # advantage kept at 100% data below which the report says the authorized use was damaged
TABLE_COLUMNS = ("random_twin", "victim", "locked", "lock_own_head", "advantage_removed", "advantage_kept")
MIN_MEASURABLE_ADVANTAGE = 0.03  # victim minus twin accuracy below which the ratios are within probe noise


def _not_measurable(row: dict[str, Any], ratio: float | None) -> str:
    """The verdict when the ratio is missing or the victim's advantage is within probe noise; "" otherwise."""
    advantage = row["victim"] - row["random_twin"]
    if advantage <= -MIN_MEASURABLE_ADVANTAGE:  # not noise: the pre-trained encoder does worse than random weights
        return (
            "not measurable: the victim is below its random-init twin on this domain, so it has no advantage to keep "
            f"or remove (victim {100 * row['victim']:.1f}%, twin {100 * row['random_twin']:.1f}%: "
            f"{100 * advantage:.1f} points; locked {100 * row['locked']:.1f}%); check the domain's size and labels"
        )
    if ratio is None or math.isnan(ratio) or advantage < MIN_MEASURABLE_ADVANTAGE:
        return (
            "not measurable: the victim's advantage over its random-init twin on this domain is within probe noise "
            f"(victim {100 * row['victim']:.1f}%, twin {100 * row['random_twin']:.1f}%: "
            f"{100 * (row['victim'] - row['random_twin']):.1f} points, under the "
            f"{100 * MIN_MEASURABLE_ADVANTAGE:.0f}-point noise floor; locked {100 * row['locked']:.1f}%)"
        )
    return ""


def advantage_text(row: dict[str, Any], key: str, missing: str = "n/a") -> str:
    """A table cell for ``row[key]`` (``advantage_removed`` or ``advantage_kept``): "within noise" where the victim's
    advantage over its twin is (a ratio of two noises says nothing), a removal above 100% marked as below the twin."""
    value = as_finite_float(row.get(key))
    if value is None:
        return missing
    victim, twin = as_finite_float(row.get("victim")), as_finite_float(row.get("random_twin"))
    if victim is not None and twin is not None and victim - twin < MIN_MEASURABLE_ADVANTAGE:
        return "within noise"
    text = percent(value)
    return f"{text} (below the twin)" if key == "advantage_removed" and value > 1.0 else text


def _below_twin(row: dict[str, Any], removed: float) -> str:
    """Words for a removal above 100%: fresh probes on the lock fell below the random-init twin."""
    if removed <= 1.0:
        return ""
    return (
        f" (above 100%: fresh probes on the lock, {100 * row['locked']:.1f}%, fall below the random-init twin, "
        f"{100 * row['random_twin']:.1f}%)"
    )


def prohibited_verdict(row: dict[str, Any]) -> str:
    """One sentence on a prohibited domain's row (victim, random_twin, locked, advantage_removed, and the adaptive
    attacker's worst case when it ran): the lock holds only if fresh probes and the worst case both stay low."""
    removed = row.get("advantage_removed", float("nan"))
    if why := _not_measurable(row, removed):
        return why
    worst = row.get("adaptive_removed")
    if worst is not None and not math.isnan(worst):
        against = (
            f"an attacker who knows the method ({row['adaptive_attack']}) reaches {100 * row['adaptive_worst']:.1f}%: "
            f"{100 * worst:.0f}% of the advantage removed, against {100 * removed:.0f}% under fresh probes "
            f"(victim {100 * row['victim']:.1f}%){_below_twin(row, removed)}"
        )
        if min(removed, worst) >= HOLD_THRESHOLD:
            return f"lock holds: {against}"
        return f"lock does NOT hold: {against}"
    if removed >= HOLD_THRESHOLD:
        return (
            f"lock holds against fresh probes: {100 * removed:.0f}% of the victim's advantage removed"
            f"{_below_twin(row, removed)} (no adaptive attacker ran)"
        )
    return (
        f"lock does NOT hold: only {100 * removed:.0f}% of the victim's advantage removed "
        f"(fresh probes reach {100 * row['locked']:.1f}%, victim {100 * row['victim']:.1f}%; no adaptive attacker ran)"
    )


def authorized_verdict(row: dict[str, Any]) -> str:
    """One sentence on an authorized domain's row (victim, random_twin, locked, advantage_kept)."""
    kept = row.get("advantage_kept", float("nan"))
    if why := _not_measurable(row, kept):
        return why
    if kept >= KEEP_THRESHOLD:
        return (
            f"authorized use kept: {100 * kept:.0f}% of the victim's advantage "
            f"(fresh probes {100 * row['locked']:.1f}%)"
        )
    return (
        f"authorized use DAMAGED: only {100 * kept:.0f}% of the victim's advantage kept "
        f"(fresh probes reach {100 * row['locked']:.1f}%, victim {100 * row['victim']:.1f}%)"
    )


def build_lock_report(
    before: ProbeReport,
    after: ProbeReport,
    authorized: Sequence[str],
    prohibited: Sequence[str],
    own_head_accuracy: dict[str, float],
    lock_summary: dict[str, Any],
    history: list[dict[str, Any]],
    timings: dict[str, float],
    experiment: dict[str, Any],
    adaptive: AdaptiveReport | None = None,
) -> dict[str, Any]:
    """One JSON-ready dict with everything the run measured (``adaptive``: the adaptive attacker's report on the
    locked encoder, whose worst case joins each prohibited row)."""
    measures = lock_measures(before, after, authorized=authorized, prohibited=prohibited)
    full = max(before.fractions)
    table = []
    for row in measures["rows"]:
        if not math.isclose(row["fraction"], full):
            continue
        table.append(
            {
                **row,
                "attacker_choice_victim": before.best(row["domain"], full, ENCODER_ROLE).usual_choice,
                "attacker_choice_locked": after.best(row["domain"], full, ENCODER_ROLE).usual_choice,
                "lock_own_head": own_head_accuracy.get(row["domain"]),
            }
        )
        if adaptive is not None and adaptive.chosen(row["domain"]):
            worst = adaptive.worst_case(row["domain"])
            table[-1].update(
                adaptive_worst=worst.test,
                adaptive_removed=adaptive.removed(worst.test, row["domain"]),
                adaptive_attack=f"{worst.family}: {worst.label}",
            )
    verdict = {row["domain"]: prohibited_verdict(row) for row in table if row["role"] == "prohibited"}
    verdict.update({row["domain"]: authorized_verdict(row) for row in table if row["role"] == "authorized"})
    return {
        "authorized": list(authorized),
        "prohibited": list(prohibited),
        "fraction": full,
        "table": table,
        "verdict": verdict,
        "measures": measures,
        "lock": lock_summary,
        "timings": timings,
        "history": history,
        "experiment": experiment,
        "probe_before": before.to_dict(),
        "probe_after": after.to_dict(),
        "adaptive": adaptive.to_dict() if adaptive is not None else None,
    }


def lock_report_markdown(report: dict[str, Any]) -> str:
    """The human-readable twin of ``report.json``."""
    lock = report["lock"]
    lines = [
        "# EncoderLock report",
        "",
        f"Authorized: {', '.join(report['authorized'])}. Prohibited: {', '.join(report['prohibited'])}. "
        f"Variant: {lock['variant']}, objective: {lock['objective']}.",
        f"Weights changed: {lock['mask']['count']} of {lock['mask']['num_parameters']} "
        f"({100 * lock['mask']['fraction']:.3f}%), over {lock['rounds_completed']} rounds.",
        "",
        f"## Fresh probes at {100 * report['fraction']:.0f}% of the attacker's training split (test accuracy)",
        "",
        "| Domain | Role | Random-init twin | Victim | Locked (fresh probe) | Lock's own head (stale) "
        "| Advantage removed | Advantage kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["table"]:
        cells = [percent(row.get(key), missing="-") for key in TABLE_COLUMNS]
        cells[-2:] = [advantage_text(row, key, missing="-") for key in TABLE_COLUMNS[-2:]]
        lines.append(markdown_row([row["domain"], row["role"] or "other", *cells]))
    lines += [
        "",
        "Fresh probe = the attacker's best of linear, MLP and kNN heads over CLS and mean pooling, chosen on a "
        "validation split of the attacker's own training images (never the lock's), scored on the test split. "
        "The lock's own head is the adversary head the lock trained against: its accuracy is not the lock's strength. "
        f"Where the victim beats its twin by less than {100 * MIN_MEASURABLE_ADVANTAGE:.0f} points (the noise floor "
        "of these probes), the advantage ratios are within probe noise and not shown, on every side. A removal above "
        "100% means fresh probes on the lock fall below the random-init twin.",
        "",
        *_adaptive_markdown(report),
        "## Verdict",
        "",
        *[f"- {domain}: {text}" for domain, text in report["verdict"].items()],
        "",
        "## Time",
        "",
        *[f"- {name}: {value:.1f}" for name, value in report["timings"].items()],
        "",
    ]
    return "\n".join(lines)


def _adaptive_markdown(report: dict[str, Any]) -> list[str]:
    """The adaptive attacker's section: the worst case per prohibited domain, then its per-family table."""
    if not report.get("adaptive"):
        return [
            "## An attacker who knows the method",
            "",
            "Not run (`adaptive_attacks` was off): the figures above are fresh probes only, and say nothing about an "
            "attacker who knows the method (docs/THREAT_MODEL.md).",
            "",
        ]
    adaptive = AdaptiveReport.from_dict(report["adaptive"])
    lines = [
        "## An attacker who knows the method (adaptive suite, probe-only families)",
        "",
        "Weights sanitised without data, inputs transformed alike for train and test, and both; each attack's "
        "strength, head and pooling chosen on the attacker's validation split. The worst case is the highest test "
        "accuracy over the attacks so chosen; advantage removed is against the victim and twin on clean images.",
        "",
    ]
    for row in adaptive.summary():
        lines += [
            f"**{row['domain']}**: worst case {percent(row['worst_accuracy'])} ({row['worst_family']}: "
            f"{row['worst_attack']}), **{percent(row['worst_removed'])} of the advantage removed** (fresh probes: "
            f"{percent(row['fresh_probe_removed'])}).",
            "",
            *adaptive_table_markdown(adaptive, row["domain"]),
            "",
        ]
    return [*lines, adaptive.outlier_line(), ""]


def plot_lock_report(report: dict[str, Any], path: str | Path) -> Path:
    """Accuracy against training fraction, one panel per domain, one line per encoder."""
    matplotlib = optional_import("matplotlib", "plots", "plotting the lock report")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["measures"]["rows"]
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    figure, axes = plt.subplots(1, len(domains), figsize=(3.2 * len(domains), 3.2), squeeze=False)
    for axis, domain in zip(axes[0], domains):
        mine = sorted((r for r in rows if r["domain"] == domain), key=lambda r: r["fraction"])
        fractions = [r["fraction"] for r in mine]
        for key, label, style in (
            ("random_twin", "random-init twin", ":"),
            ("victim", "victim", "-"),
            ("locked", "locked", "--"),
        ):
            axis.plot(fractions, [r[key] for r in mine], style, marker="o", label=label)
        role = mine[0]["role"] or "other"
        axis.set_title(f"{domain} ({role})")
        axis.set_xscale("log")
        axis.set_ylim(0, 1)
        axis.set_xlabel("training fraction")
    axes[0][0].set_ylabel("fresh-probe test accuracy")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target
