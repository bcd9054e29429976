"""Probe results (:class:`ProbeReport`), their rendering (JSON, Markdown, PNG) and the lock measures.

The lock measures compare a probe's accuracy on the locked encoder with the victim's and with the random-init
twin's (the attacker's no-encoder baseline):

- advantage removed (prohibited domain) = (victim - locked) / (victim - random_twin)
- advantage kept (authorized domain)    = (locked - random_twin) / (victim - random_twin) = 1 - advantage removed

A row whose victim is no better than its random twin has no advantage to remove or keep: its measures are NaN.
:func:`make_compute_metrics` gives ``transformers.Trainer`` the same accuracy the probes use.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import PROBE_REPORT_STEM, REPORT_FORMAT_VERSION
from .._utils import finite, markdown_row, optional_import, percent
from .heads import accuracy

ENCODER_ROLE = "encoder"
TWIN_ROLE = "random_twin"
ROLES = (ENCODER_ROLE, TWIN_ROLE)
# A victim this close to its random twin (in accuracy) has no measurable advantage.
MIN_ADVANTAGE = 1e-12


# ---------------------------------------------------------------------------------------------------- metric
def make_compute_metrics() -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics(eval_pred)`` for ``transformers.Trainer``: :func:`~.heads.accuracy` of the arg-max of the
    logits."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions if hasattr(eval_pred, "predictions") else eval_pred[0]
        labels = eval_pred.label_ids if hasattr(eval_pred, "label_ids") else eval_pred[1]
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits, labels = np.asarray(logits), np.asarray(labels)
        predictions = logits.argmax(-1) if logits.ndim > labels.ndim else logits
        return {"accuracy": accuracy(predictions, labels)}

    return compute_metrics


# --------------------------------------------------------------------------------------------------- results
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


class SeedAccuracies:
    """Mean and sample standard deviation of ``test_accuracy`` (one value per seed) for the score records."""

    test_accuracy: list[float]

    @property
    def mean(self) -> float:
        return _mean_std(self.test_accuracy)[0]

    @property
    def std(self) -> float:
        return _mean_std(self.test_accuracy)[1]


@dataclass
class ProbeScore(SeedAccuracies):
    """Test accuracy of one head kind under one pooling at one training fraction, one value per seed."""

    role: str
    domain: str
    head: str
    pooling: str
    fraction: float
    n_train: int
    n_validation: int
    n_test: int
    seeds: list[int]
    test_accuracy: list[float]
    validation_accuracy: list[float]
    hyperparameters: list[dict[str, Any]]


@dataclass
class BestScore(SeedAccuracies):
    """The attacker's best per seed: the (head, pooling, hyper-parameters) with the best validation accuracy."""

    role: str
    domain: str
    fraction: float
    n_train: int
    seeds: list[int]
    test_accuracy: list[float]
    validation_accuracy: list[float]
    choices: list[dict[str, Any]]

    @property
    def usual_choice(self) -> str:
        """The most frequent ``head/pooling`` over seeds."""
        counts = Counter(f"{c['head']}/{c['pooling']}" for c in self.choices)
        return counts.most_common(1)[0][0] if counts else ""


@dataclass
class ProbeReport:
    """Everything one probe-suite run measured; see :func:`hf_encoderlock.probing.suite.run_probe_suite`."""

    encoder: str
    random_twin: str | None
    domains: dict[str, dict[str, Any]]
    config: dict[str, Any]
    scores: list[ProbeScore] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------ queries
    @property
    def roles(self) -> tuple[str, ...]:
        present = {s.role for s in self.scores}
        return tuple(r for r in ROLES if r in present)

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(sorted({s.fraction for s in self.scores}))

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(self.domains)

    def select(
        self, role: str = ENCODER_ROLE, domain: str | None = None, fraction: float | None = None
    ) -> list[ProbeScore]:
        """Scores matching the given role / domain / fraction."""
        return [
            s
            for s in self.scores
            if s.role == role
            and (domain is None or s.domain == domain)
            and (fraction is None or math.isclose(s.fraction, fraction))
        ]

    def best(self, domain: str, fraction: float, role: str = ENCODER_ROLE, head: str | None = None) -> BestScore:
        """The attacker's best on ``domain`` at ``fraction``: per seed, the head kind, pooling and hyper-parameters
        with the highest validation accuracy (never test accuracy), scored on test. ``head`` restricts the choice
        to one head kind (its best pooling)."""
        candidates = [s for s in self.select(role, domain, fraction) if head is None or s.head == head]
        if not candidates:
            raise KeyError(f"no scores for role={role!r}, domain={domain!r}, fraction={fraction}, head={head!r}")
        seeds = candidates[0].seeds
        test, val, choices = [], [], []
        for i in range(len(seeds)):
            # Highest validation accuracy for this seed; ties go to the higher mean validation accuracy over seeds,
            # then to the first in config order.
            winner = max(candidates, key=lambda s: (s.validation_accuracy[i], float(np.mean(s.validation_accuracy))))
            test.append(winner.test_accuracy[i])
            val.append(winner.validation_accuracy[i])
            choices.append({"head": winner.head, "pooling": winner.pooling, **winner.hyperparameters[i]})
        return BestScore(role, domain, candidates[0].fraction, candidates[0].n_train, list(seeds), test, val, choices)

    def best_scores(self, role: str = ENCODER_ROLE) -> list[BestScore]:
        """The attacker's best for every (domain, fraction)."""
        return [self.best(d, f, role) for d in self.domain_names for f in self.fractions if self.select(role, d, f)]

    def best_per_head(self, role: str = ENCODER_ROLE) -> list[tuple[str, BestScore]]:
        """``(head, best)`` for every (domain, head, fraction): each head kind at its best pooling (on validation)."""
        out = []
        for domain in self.domain_names:
            heads = dict.fromkeys(s.head for s in self.select(role, domain))
            for head in heads:
                for fraction in self.fractions:
                    if any(s.head == head for s in self.select(role, domain, fraction)):
                        out.append((head, self.best(domain, fraction, role, head)))
        return out

    # ---------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        best = {role: [dict(asdict(b), mean=b.mean, std=b.std) for b in self.best_scores(role)] for role in self.roles}
        per_head = {
            role: [dict(asdict(b), head=h, mean=b.mean, std=b.std) for h, b in self.best_per_head(role)]
            for role in self.roles
        }
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "encoder": self.encoder,
            "random_twin": self.random_twin,
            "domains": self.domains,
            "config": self.config,
            "timings": self.timings,
            "versions": self.versions,
            "best": best,
            "best_per_head": per_head,
            "scores": [dict(asdict(s), mean=s.mean, std=s.std) for s in self.scores],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        names = {f for f in ProbeScore.__dataclass_fields__}
        scores = [ProbeScore(**{k: v for k, v in s.items() if k in names}) for s in data.get("scores", [])]
        return cls(
            encoder=data["encoder"],
            random_twin=data.get("random_twin"),
            domains=data.get("domains", {}),
            config=data.get("config", {}),
            scores=scores,
            timings=data.get("timings", {}),
            versions=data.get("versions", {}),
        )

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON (NaN written as null); also written to ``path`` when given."""
        return report_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ProbeReport:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(_nan_from_null(data))

    def to_markdown(self) -> str:
        return report_to_markdown(self)

    def plot(self, path: str | os.PathLike) -> Path:
        return plot_report(self, path)

    def save(self, output_dir: str | os.PathLike, stem: str = PROBE_REPORT_STEM) -> dict[str, Path]:
        """Write ``{stem}.json``, ``{stem}.md`` and ``{stem}.png`` into ``output_dir``."""
        return save_report_files(self, output_dir, stem)


def report_json(data: dict[str, Any], path: str | os.PathLike | None = None) -> str:
    """A report's dict as strict JSON (NaN and inf as null), also written to ``path`` (folders made) when given."""
    text = json.dumps(finite(data), indent=2)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n", encoding="utf-8")
    return text


def save_report_files(report: Any, output_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write a report's ``to_json`` / ``to_markdown`` / ``plot`` as ``{stem}.json``, ``.md`` and ``.png``."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "plot": folder / f"{stem}.png"}
    report.to_json(paths["json"])
    paths["markdown"].write_text(report.to_markdown(), encoding="utf-8")
    report.plot(paths["plot"])
    return paths


def _nan_from_null(data: dict[str, Any]) -> dict[str, Any]:
    for score in data.get("scores", []):
        for key in ("test_accuracy", "validation_accuracy"):
            score[key] = [float("nan") if v is None else v for v in score.get(key, [])]
    return data


# -------------------------------------------------------------------------------------------------- markdown
def _cell(mean: float, std: float) -> str:
    return f"{percent(mean, suffix='')} ± {percent(std, suffix='')}" if math.isfinite(mean) else "n/a"


def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def report_to_markdown(report: ProbeReport) -> str:
    """Markdown tables: the attacker's best per (domain, fraction), then every (head, pooling) per domain."""
    config = report.config
    seeds = config.get("seeds", [])
    roles = report.roles
    role_names = {ENCODER_ROLE: "Encoder", TWIN_ROLE: "Random twin"}
    lines = [
        f"# Probe report: {report.encoder}",
        "",
        f"Fresh heads ({', '.join(config.get('heads', []))}) trained on frozen features "
        f"(poolings: {', '.join(config.get('poolings') or [])}); hyper-parameters, head kind and pooling chosen on a "
        "validation split carved from train, never on test. Test accuracy (%), mean ± std over "
        f"{len(seeds)} seed(s).",
    ]
    if TWIN_ROLE in roles:
        lines.append(
            f"Random twin: {report.random_twin} (same architecture, random weights): "
            "the attacker's no-encoder baseline."
        )
    header = ["Domain", "Classes (chance %)", "Train fraction", "Train size", *(role_names[r] for r in roles)]
    lines += ["", "## Attacker's best", "", markdown_row(header), markdown_row(["---"] * len(header))]
    for domain in report.domain_names:
        info = report.domains.get(domain, {})
        for fraction in report.fractions:
            bests = [report.best(domain, fraction, role) for role in roles if report.select(role, domain, fraction)]
            if not bests:
                continue
            cells = [f"{_cell(b.mean, b.std)} ({b.usual_choice})" for b in bests]
            classes = f"{info.get('num_classes', '?')} ({percent(info.get('chance', float('nan')), suffix='')})"
            lines.append(markdown_row([domain, classes, fraction_label(fraction), str(bests[0].n_train), *cells]))
    lines += ["", "## Per head (best pooling on validation)", ""]
    header = ["Domain", "Head", *(f"{role_names[r]} {fraction_label(f)}" for r in roles for f in report.fractions)]
    lines += [markdown_row(header), markdown_row(["---"] * len(header))]
    per_head = {(role, h, b.domain, b.fraction): b for role in roles for h, b in report.best_per_head(role)}
    for domain in report.domain_names:
        for head in dict.fromkeys(s.head for s in report.select(ENCODER_ROLE, domain)):
            cells = []
            for role in roles:
                for fraction in report.fractions:
                    b = per_head.get((role, head, domain, fraction))
                    cells.append(_cell(b.mean, b.std) if b else "")
            lines.append(markdown_row([domain, head, *cells]))
    lines += ["", "## Every head and pooling", ""]
    fractions = report.fractions
    for domain in report.domain_names:
        header = ["Encoder", "Head", "Pooling", *(fraction_label(f) for f in fractions)]
        lines += [f"### {domain}", "", markdown_row(header), markdown_row(["---"] * len(header))]
        for role in roles:
            keys = list(dict.fromkeys((s.head, s.pooling) for s in report.select(role, domain)))
            for head, pooling in keys:
                cells = []
                for fraction in fractions:
                    match = [s for s in report.select(role, domain, fraction) if (s.head, s.pooling) == (head, pooling)]
                    cells.append(_cell(match[0].mean, match[0].std) if match else "")
                lines.append(markdown_row([role_names[role], head, pooling, *cells]))
        lines.append("")
    if report.timings:
        lines += ["## Timings (s)", "", markdown_row(["Step", "Seconds"]), markdown_row(["---", "---"])]
        lines += [markdown_row([name, f"{seconds:.2f}"]) for name, seconds in report.timings.items()]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ plot
def plot_report(report: ProbeReport, path: str | os.PathLike) -> Path:
    """PNG of the attacker's best test accuracy against training fraction, one line per domain (random twin
    dashed, chance dotted). Uses the Agg canvas directly: no pyplot, no global backend state."""
    optional_import("matplotlib", "plots", "plotting a probe report")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    colours = [f"C{i}" for i in range(10)]
    fractions = report.fractions
    for i, domain in enumerate(report.domain_names):
        colour = colours[i % len(colours)]
        for role, style, suffix in ((ENCODER_ROLE, "-", ""), (TWIN_ROLE, "--", " (random twin)")):
            bests = [report.best(domain, f, role) for f in fractions if report.select(role, domain, f)]
            if not bests:
                continue
            axes.errorbar(
                [b.fraction for b in bests],
                [b.mean for b in bests],
                yerr=[b.std for b in bests],
                color=colour,
                linestyle=style,
                marker="o" if role == ENCODER_ROLE else "x",
                capsize=3,
                label=f"{domain}{suffix}",
            )
        chance = report.domains.get(domain, {}).get("chance")
        if chance is not None and math.isfinite(chance):
            axes.axhline(chance, color=colour, linestyle=":", linewidth=0.8, alpha=0.6)
    if fractions:
        axes.set_xscale("log")
        axes.set_xticks(list(fractions))
        axes.set_xticklabels([fraction_label(f) for f in fractions])
        axes.minorticks_off()
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("fraction of the training split used by the attacker")
    axes.set_ylabel("test accuracy (attacker's best)")
    axes.set_title(f"Probing {report.encoder}", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    return target


# ---------------------------------------------------------------------------------------------- lock measures
def advantage_removed(locked: float, victim: float, random_twin: float) -> float:
    """(victim - locked) / (victim - random_twin); NaN when the victim has no advantage over its random twin."""
    advantage = float(victim) - float(random_twin)
    if not advantage > MIN_ADVANTAGE:
        return float("nan")
    return (float(victim) - float(locked)) / advantage


def advantage_kept(locked: float, victim: float, random_twin: float) -> float:
    """(locked - random_twin) / (victim - random_twin); NaN when the victim has no advantage over its random twin."""
    advantage = float(victim) - float(random_twin)
    if not advantage > MIN_ADVANTAGE:
        return float("nan")
    return (float(locked) - float(random_twin)) / advantage


MEASURES = (("advantage_removed", advantage_removed), ("advantage_kept", advantage_kept))


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values (NaN when none is)."""
    defined = [v for v in values if not math.isnan(v)]
    return float(sum(defined) / len(defined)) if defined else float("nan")


def lock_measures(
    victim: ProbeReport,
    locked: ProbeReport,
    authorized: Sequence[str] = (),
    prohibited: Sequence[str] = (),
) -> dict[str, Any]:
    """Advantage removed (prohibited) and kept (authorized) per domain and fraction, from the attacker's best.

    The random twin's accuracy comes from ``victim`` (else ``locked``); run the suite with ``random_twin=True``.
    Domains in neither list get both measures. Returns ``{"rows": [...], "summary": {fraction: {...}}}``.
    """
    overlap = set(authorized) & set(prohibited)
    if overlap:
        raise ValueError(f"domain(s) {sorted(overlap)} are both authorized and prohibited")
    twin_source = victim if TWIN_ROLE in victim.roles else locked if TWIN_ROLE in locked.roles else None
    if twin_source is None:
        raise ValueError("neither report has random-twin scores; run the probe suite with random_twin=True")
    domains = [d for d in victim.domain_names if d in locked.domain_names and d in twin_source.domain_names]
    fractions = [f for f in victim.fractions if any(math.isclose(f, g) for g in locked.fractions)]
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, float]] = {}
    for fraction in fractions:
        by_role: dict[str | None, list[dict[str, Any]]] = {}
        for domain in domains:
            role = "authorized" if domain in authorized else "prohibited" if domain in prohibited else None
            row = {
                "domain": domain,
                "role": role,
                "fraction": fraction,
                "victim": victim.best(domain, fraction).mean,
                "locked": locked.best(domain, fraction).mean,
                "random_twin": twin_source.best(domain, fraction, TWIN_ROLE).mean,
            }
            by_role.setdefault(role, []).append(row)
            rows.append(row)
        summary_row: dict[str, float] = {}
        for role, members in by_role.items():
            # a domain in neither list gets both measures, and no mean
            measures = {"prohibited": [MEASURES[0]], "authorized": [MEASURES[1]]}.get(role, MEASURES)
            for name, measure in measures:
                values = [measure(r["locked"], r["victim"], r["random_twin"]) for r in members]
                for r, value in zip(members, values):
                    r[name] = value
                if role is not None:
                    summary_row[f"mean_{name}"] = _nanmean(values)
        summary[fraction_label(fraction)] = summary_row
    return {"rows": rows, "summary": summary}
