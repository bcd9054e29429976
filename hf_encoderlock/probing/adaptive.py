"""The adaptive attacker: every move of an attacker who knows the method, and the worst case over them.

Kerckhoffs' attacker knows EncoderLock, this package and its defaults; it lacks the victim's weights and the mask.
It holds labelled images of the prohibited domain (the lock never used them) and a small sample of the authorized
domain. :func:`run_adaptive_suite` plays its moves, family by family, each with a small strength grid:

- ``fresh_probe``: new linear / MLP / kNN heads on the untouched encoder (the probe suite's attacker);
- ``sanitize``: data-free weight edits of the released folder (:mod:`hf_encoderlock.probing.sanitize`), then probes;
- ``transform``: input transformations applied alike to the attacker's train, validation and test images
  (:mod:`hf_encoderlock.probing.transforms`), then probes; among them a colour map and a patch map the attacker
  learns through the locked encoder itself (:mod:`hf_encoderlock.probing.learned_transforms`);
- ``sanitize+transform``: the sanitiser and the transform each chose on validation, together;
- with ``suite="full"``, fine-tuning families (:mod:`hf_encoderlock.probing.attacks`): patient full fine-tuning,
  re-initialisation of the blocks a lock may change then fine-tuning, and fine-tuning after the chosen sanitiser,
  each against training from scratch on the same images and budget.

For every attack the strength (and head, pooling, hyper-parameters) is chosen on the attacker's own validation split
(carved from its training split); test images only score the choice. The worst case is the highest test accuracy
over the attacks so chosen: a reviewer's figure (the maximum over attacks also picks up their test noise, so it errs
towards the attacker). It is turned into advantage removed with the victim's and the random-init twin's fresh-probe
accuracies on clean images.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import DatasetDict
from PIL import Image
from torch import nn

from .._files import ADAPTIVE_REPORT_STEM, REPORT_FORMAT_VERSION
from .._utils import markdown_row, package_versions, percent
from ..encoders import EncoderAdapter, load_encoder
from .attacks import SCRATCH, AttackConfig, run_attack_suite
from .heads import torch_threads
from .learned_transforms import (
    LEARNED_TRANSFORMS,
    LearnedMapFit,
    fit_learned_transform,
    fit_rows,
    input_mapped_encoder,
    patch_grid_problem,
)
from .probe_report import ENCODER_ROLE, TWIN_ROLE, ProbeReport, advantage_removed, report_json
from .sanitize import SANITIZERS, count_outliers, count_piled_up, sanitize_module, telltale
from .suite import ProbeConfig, load_domains, run_probe_suite, split_training_rows
from .transforms import TRANSFORMS, ChannelStats, domain_stats, transformed_encoder

logger = logging.getLogger(__name__)

FRESH_PROBE, SANITIZE, TRANSFORM, COMBINED, FINETUNE = (
    "fresh_probe",
    "sanitize",
    "transform",
    "sanitize+transform",
    "finetune",
)
PROBE_FAMILIES = (FRESH_PROBE, SANITIZE, TRANSFORM, COMBINED)
SUITES = ("probe", "full")


class AdaptiveError(ValueError):
    """The adaptive suite cannot run as configured; the message names the problem."""


@dataclass
class AdaptiveConfig:
    """Every setting of the adaptive attacker (its moves, their strength grids and its probing budget)."""

    suite: Literal["probe", "full"] = field(
        default="probe",
        metadata={"help": "'probe': the probe-only families (fast); 'full': the fine-tuning families too."},
    )
    sanitizers: tuple[str, ...] = field(
        default=tuple(SANITIZERS), metadata={"help": f"Weight sanitisers tried, of {tuple(SANITIZERS)}."}
    )
    transforms: tuple[str, ...] = field(
        default=tuple(TRANSFORMS), metadata={"help": f"Input transformations tried, of {tuple(TRANSFORMS)}."}
    )
    learned_transforms: tuple[str, ...] = field(
        default=tuple(LEARNED_TRANSFORMS),
        metadata={
            "help": f"Learned input transformations tried, of {tuple(LEARNED_TRANSFORMS)}: fitted with a linear head "
            "through the attacked encoder on training rows no probe seed validates on, then probed like the others "
            "(patch_map only on encoders with square patches)."
        },
    )
    combine: bool = field(
        default=True, metadata={"help": "Also try the sanitiser and the transform chosen on validation together."}
    )
    fraction: float = field(default=1.0, metadata={"help": "Share of the attacker's training split the probes use."})
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2), metadata={"help": "Probe seeds (each carves its own validation split)."}
    )
    heads: tuple[str, ...] = field(default=("linear", "mlp", "knn"), metadata={"help": "Probe head kinds."})
    reference_share: float = field(
        default=0.01,
        metadata={"help": "Share of the attacker's authorized images used for channel statistics (transforms)."},
    )
    transform_seed: int = field(default=0, metadata={"help": "Seed of randomised transforms (colour jitter)."})
    noise_seed: int = field(default=0, metadata={"help": "Seed of the Gaussian-noise sanitiser."})
    finetune_fractions: tuple[float, ...] = field(
        default=(0.1,), metadata={"help": "suite='full': shares of the training split the fine-tuning families use."}
    )
    finetune_epochs: int = field(
        default=50, metadata={"help": "suite='full': epochs per fine-tuning run (the best is chosen on validation)."}
    )
    finetune_lrs: tuple[float, ...] = field(
        default=(1e-4, 3e-4, 1e-3, 3e-3), metadata={"help": "suite='full': AdamW learning rates tried."}
    )
    finetune_seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "suite='full': fine-tuning seeds."})
    reinit_blocks: tuple[int, ...] = field(
        default=(-1, 0, 1),
        metadata={"help": "suite='full': blocks re-initialised before fine-tuning (the lock's default candidates)."},
    )
    batch_size: int = field(default=256, metadata={"help": "Images per encoder pass during feature extraction."})
    domain_seed: int = field(default=0, metadata={"help": "Seed passed to load_domain for named domains."})
    image_column: str = field(default="image", metadata={"help": "Image column of every domain."})
    label_column: str = field(default="label", metadata={"help": "Label column of every domain."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (None: as is); restored after."})
    progress: bool = field(default=True, metadata={"help": "Show progress while the attacks run."})

    def __post_init__(self) -> None:
        self.sanitizers, self.transforms, self.heads = tuple(self.sanitizers), tuple(self.transforms), tuple(self.heads)
        self.learned_transforms = tuple(self.learned_transforms)
        self.seeds, self.finetune_seeds = tuple(int(s) for s in self.seeds), tuple(int(s) for s in self.finetune_seeds)
        self.finetune_fractions = tuple(float(f) for f in self.finetune_fractions)
        self.finetune_lrs = tuple(float(lr) for lr in self.finetune_lrs)
        self.reinit_blocks = tuple(int(b) for b in self.reinit_blocks)
        checks = [
            (self.suite in SUITES, f"suite must be one of {SUITES}, got {self.suite!r}"),
            (set(self.sanitizers) <= set(SANITIZERS), f"sanitizers must be a subset of {tuple(SANITIZERS)}"),
            (set(self.transforms) <= set(TRANSFORMS), f"transforms must be a subset of {tuple(TRANSFORMS)}"),
            (
                set(self.learned_transforms) <= set(LEARNED_TRANSFORMS),
                f"learned_transforms must be a subset of {tuple(LEARNED_TRANSFORMS)}",
            ),
            (0.0 < self.fraction <= 1.0, "fraction must be in (0, 1]"),
            (0.0 < self.reference_share <= 1.0, "reference_share must be in (0, 1]"),
            (all(0.0 < f <= 1.0 for f in self.finetune_fractions), "finetune_fractions must be in (0, 1]"),
            (self.finetune_epochs >= 1 and bool(self.finetune_lrs), "finetune needs epochs >= 1 and a learning rate"),
        ]
        for ok, message in checks:
            if not ok:
                raise AdaptiveError(f"AdaptiveConfig: {message}")
        # the probe settings are checked now, not after the first attack
        self.probe_config()
        self.attack_config(("full",))

    def probe_config(self) -> ProbeConfig:
        """The probes every probe-only family trains (the probe suite's grid at one fraction)."""
        return ProbeConfig(
            fractions=(self.fraction,),
            seeds=self.seeds,
            heads=self.heads,
            batch_size=self.batch_size,
            image_column=self.image_column,
            label_column=self.label_column,
            domain_seed=self.domain_seed,
            progress=False,
        )

    def attack_config(self, attacks: Sequence[str]) -> AttackConfig:
        """The fine-tuning attacker: every lr of the grid for every attack and for training from scratch."""
        lrs = self.finetune_lrs
        return AttackConfig(
            attacks=tuple(attacks),
            fractions=self.finetune_fractions,
            seeds=self.finetune_seeds,
            epochs=self.finetune_epochs,
            full_lrs=lrs,
            reinit_lrs=lrs,
            scratch_lrs=lrs,
            reinit_blocks=self.reinit_blocks,
            domain_seed=self.domain_seed,
            progress=self.progress,
        )


@dataclass
class AttackOutcome:
    """One attack at one strength on one domain: the attacker's best probe (chosen on validation), per seed."""

    family: str
    attack: str
    strength: float | None
    domain: str
    validation_accuracy: list[float]
    test_accuracy: list[float]
    choice: str = ""

    @property
    def validation(self) -> float:
        return float(np.mean(self.validation_accuracy))

    @property
    def test(self) -> float:
        return float(np.mean(self.test_accuracy))

    @property
    def test_std(self) -> float:
        return float(np.std(self.test_accuracy, ddof=1)) if len(self.test_accuracy) > 1 else 0.0

    @property
    def label(self) -> str:
        return self.attack if self.strength is None else f"{self.attack} {self.strength:g}"


@dataclass
class FinetuneOutcome:
    """One fine-tuning attack on one domain at one fraction, with training from scratch on the same images."""

    attack: str
    domain: str
    fraction: float
    test_accuracy: list[float]
    hyperparameters: list[dict[str, Any]]
    scratch_accuracy: list[float]

    @property
    def test(self) -> float:
        return float(np.mean(self.test_accuracy))

    @property
    def scratch(self) -> float:
        return float(np.mean(self.scratch_accuracy)) if self.scratch_accuracy else float("nan")


@dataclass
class AdaptiveReport:
    """Everything one adaptive-suite run measured; :meth:`worst_case` is the lock's strength."""

    encoder: str
    domains: dict[str, dict[str, Any]]
    baselines: dict[str, dict[str, float]]
    config: dict[str, Any]
    outcomes: list[AttackOutcome] = field(default_factory=list)
    finetune: list[FinetuneOutcome] = field(default_factory=list)
    outliers: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    #: the unlocked encoder's per-tensor counts beyond 6 robust std (None: not known)
    victim_outliers: dict[str, int] | None = None
    #: per tensor, entries on a piled-up value (:func:`~hf_encoderlock.probing.sanitize.piled_up`), locked and victim
    piled_up: dict[str, int] = field(default_factory=dict)
    victim_piled_up: dict[str, int] | None = None

    def telltale_tensors(self) -> list[str]:
        """Tensors holding more than twice the victim's entries beyond 6 robust std (the issue's "no tell-tale
        weights" rule), or more than twice its entries on piled-up values (a bound's clamp); with the victim's
        counts unknown, every tensor holding any."""
        flagged = telltale(self.outliers, self.victim_outliers) + telltale(self.piled_up, self.victim_piled_up)
        return list(dict.fromkeys(flagged))

    def outlier_line(self) -> str:
        """One sentence on the outlier weights an attacker can see (and reset) without data."""
        total = sum(self.outliers.values())
        line = f"Weights beyond 6 robust std of their tensor's median: {total} over {len(self.outliers)} tensors"
        if self.victim_outliers is None:
            return line + " (the victim's count is unknown)."
        flagged = self.telltale_tensors()
        line += f" (victim: {sum(self.victim_outliers.values())})"
        piled = sum(self.piled_up.values())
        if piled or self.victim_piled_up:
            line += f"; entries on a piled-up value (a bound's clamp): {piled}" + (
                "" if self.victim_piled_up is None else f" (victim: {sum(self.victim_piled_up.values())})"
            )
        if not flagged:
            return line + "; no tensor holds more than twice the victim's."
        return line + (
            f"; {len(flagged)} tensor(s) hold more than twice the victim's, tell-tale weights that a data-free "
            "reset finds."
        )

    def chosen(self, domain: str) -> list[AttackOutcome]:
        """Per attack on ``domain``, the strength the attacker chose on validation (ties: the first tried)."""
        best: dict[tuple[str, str], AttackOutcome] = {}
        for outcome in self.outcomes:
            if outcome.domain != domain:
                continue
            key = (outcome.family, outcome.attack)
            if key not in best or outcome.validation > best[key].validation:
                best[key] = outcome
        return list(best.values())

    def best_in_family(self, domain: str, family: str) -> AttackOutcome | None:
        """The family's attack with the highest validation accuracy (what the attacker would use of it)."""
        members = [o for o in self.chosen(domain) if o.family == family]
        return max(members, key=lambda o: o.validation) if members else None

    def worst_case(self, domain: str) -> AttackOutcome:
        """The highest test accuracy over every attack (each at its strength chosen on validation)."""
        chosen = self.chosen(domain)
        if not chosen:
            raise KeyError(f"no adaptive attack was run on {domain!r}")
        return max(chosen, key=lambda o: o.test)

    def removed(self, accuracy: float, domain: str) -> float:
        """Advantage removed at ``accuracy`` against the domain's clean victim and twin (NaN without a victim)."""
        base = self.baselines.get(domain, {})
        if base.get("victim") is None or base.get("random_twin") is None:
            return float("nan")
        return advantage_removed(accuracy, base["victim"], base["random_twin"])

    def family_table(self, domain: str) -> list[dict[str, Any]]:
        """One row per probe-only family: the attack with the family's highest test accuracy, each attack at the
        strength chosen on validation (the worst case's rule, per family)."""
        rows = []
        for family in PROBE_FAMILIES:
            members = [o for o in self.chosen(domain) if o.family == family]
            if not members:
                continue
            top = max(members, key=lambda o: o.test)
            rows.append(
                {
                    "family": family,
                    "attack": top.attack,
                    "strength": top.strength,
                    "choice": top.choice,
                    "test_accuracy": top.test,
                    "test_std": top.test_std,
                    "validation_accuracy": top.validation,
                    "advantage_removed": self.removed(top.test, domain),
                }
            )
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """Per domain: the worst case (attack, strength, accuracy, advantage removed) and the fresh-probe figure."""
        rows = []
        for domain in self.domains:
            if not self.chosen(domain):
                continue
            worst = self.worst_case(domain)
            fresh = [o for o in self.chosen(domain) if o.family == FRESH_PROBE]
            rows.append(
                {
                    "domain": domain,
                    **{k: self.baselines.get(domain, {}).get(k) for k in ("victim", "random_twin")},
                    "fresh_probe": fresh[0].test if fresh else None,
                    "fresh_probe_removed": self.removed(fresh[0].test, domain) if fresh else None,
                    "worst_family": worst.family,
                    "worst_attack": worst.label,
                    "worst_accuracy": worst.test,
                    "worst_removed": self.removed(worst.test, domain),
                }
            )
        return rows

    # ---------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "encoder": self.encoder,
            "domains": self.domains,
            "baselines": self.baselines,
            "config": self.config,
            "worst_case": self.summary(),
            "families": {domain: self.family_table(domain) for domain in self.domains},
            "outcomes": [dict(asdict(o), validation=o.validation, test=o.test) for o in self.outcomes],
            "finetune": [dict(asdict(o), test=o.test, scratch=o.scratch) for o in self.finetune],
            "outliers_beyond_6": self.outliers,
            "victim_outliers_beyond_6": self.victim_outliers,
            "piled_up": self.piled_up,
            "victim_piled_up": self.victim_piled_up,
            "telltale_tensors": self.telltale_tensors(),
            "timings": self.timings,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveReport:
        def nan(values: list[Any]) -> list[float]:
            return [float("nan") if v is None else float(v) for v in values]

        outcome_fields, finetune_fields = (
            set(AttackOutcome.__dataclass_fields__),
            set(FinetuneOutcome.__dataclass_fields__),
        )
        outcomes = []
        for raw in data.get("outcomes", []):
            values = {k: v for k, v in raw.items() if k in outcome_fields}
            values["validation_accuracy"], values["test_accuracy"] = (
                nan(values["validation_accuracy"]),
                nan(values["test_accuracy"]),
            )
            outcomes.append(AttackOutcome(**values))
        finetune = [
            FinetuneOutcome(**{k: v for k, v in raw.items() if k in finetune_fields})
            for raw in data.get("finetune", [])
        ]
        return cls(
            data["encoder"],
            data.get("domains", {}),
            data.get("baselines", {}),
            data.get("config", {}),
            outcomes,
            finetune,
            data.get("outliers_beyond_6", {}),
            data.get("timings", {}),
            data.get("versions", {}),
            data.get("victim_outliers_beyond_6"),
            data.get("piled_up", {}),
            data.get("victim_piled_up"),
        )

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as strict JSON (NaN as null); also written to ``path`` when given."""
        return report_json(self.to_dict(), path)

    def to_markdown(self) -> str:
        return adaptive_report_markdown(self)

    def save(self, output_dir: str | os.PathLike, stem: str = ADAPTIVE_REPORT_STEM) -> dict[str, Path]:
        """Write ``{stem}.json`` and ``{stem}.md`` into ``output_dir``."""
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md"}
        self.to_json(paths["json"])
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def adaptive_table_markdown(report: AdaptiveReport, domain: str) -> list[str]:
    """The per-family table of one domain: family, best attack and strength, accuracy, advantage removed."""
    lines = [
        markdown_row(["Family", "Best attack (strength)", "Probe", "Test accuracy", "Advantage removed"]),
        markdown_row(["---"] * 5),
    ]
    for row in report.family_table(domain):
        strength = "" if row["strength"] is None else f" ({row['strength']:g})"
        cells = [
            row["family"],
            f"{row['attack']}{strength}",
            row["choice"] or "-",
            f"{percent(row['test_accuracy'])} ± {percent(row['test_std'], suffix='')}",
            percent(row["advantage_removed"]),
        ]
        lines.append(markdown_row(cells))
    return lines


def adaptive_report_markdown(report: AdaptiveReport) -> str:
    """Markdown: the worst case per domain, the per-family table, every attack and strength, fine-tuning."""
    lines = [
        f"# Adaptive attack report: {report.encoder}",
        "",
        "An attacker who knows the method, without the victim or the mask. Every attack's strength, head, pooling and "
        "hyper-parameters are chosen on the attacker's validation split; the worst case is the highest test accuracy "
        "over the attacks so chosen. Advantage removed is against the victim and the random-init twin on clean images.",
        "",
        "## Worst case",
        "",
        markdown_row(["Domain", "Twin", "Victim", "Fresh probe", "Removed", "Worst attack", "Accuracy", "Removed"]),
        markdown_row(["---"] * 8),
    ]
    for row in report.summary():
        lines.append(
            markdown_row(
                [
                    row["domain"],
                    percent(row["random_twin"]),
                    percent(row["victim"]),
                    percent(row["fresh_probe"]),
                    percent(row["fresh_probe_removed"]),
                    f"{row['worst_family']}: {row['worst_attack']}",
                    percent(row["worst_accuracy"]),
                    percent(row["worst_removed"]),
                ]
            )
        )
    for domain in report.domains:
        if not report.chosen(domain):
            continue
        lines += ["", f"## {domain}: by family", "", *adaptive_table_markdown(report, domain)]
        lines += [
            "",
            f"## {domain}: every attack and strength (mean over seeds)",
            "",
            markdown_row(["Family", "Attack", "Strength", "Validation", "Test", "Chosen"]),
            markdown_row(["---"] * 6),
        ]
        chosen = {id(o) for o in report.chosen(domain)}
        for o in (o for o in report.outcomes if o.domain == domain):
            strength = "" if o.strength is None else f"{o.strength:g}"
            cells = [
                o.family,
                o.attack,
                strength,
                percent(o.validation),
                percent(o.test),
                "yes" if id(o) in chosen else "",
            ]
            lines.append(markdown_row(cells))
    if report.finetune:
        lines += [
            "",
            "## Fine-tuning families (test accuracy, mean over seeds; lr and epoch chosen on validation)",
            "",
            markdown_row(
                ["Domain", "Attack", "Fraction", "Accuracy", "From scratch", "Above scratch (points)", "Chosen"]
            ),
            markdown_row(["---"] * 7),
        ]
        for o in report.finetune:
            choice = ", ".join(f"lr {h.get('lr'):g} ep {h.get('epochs')}" for h in o.hyperparameters)
            lines.append(
                markdown_row(
                    [
                        o.domain,
                        o.attack,
                        f"{100 * o.fraction:g}%",
                        percent(o.test),
                        percent(o.scratch),
                        percent(o.test - o.scratch, suffix=""),
                        choice,
                    ]
                )
            )
    if report.outliers or report.victim_outliers is not None:
        lines += ["", report.outlier_line()]
    if report.timings:
        lines += ["", "## Timings (s)", "", *[f"- {k}: {v:.1f}" for k, v in report.timings.items()]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- the suite
def _outcomes(
    report, family: str, attack: str, strength: float | None, fraction: float, domains=None
) -> list[AttackOutcome]:
    out = []
    for domain in report.domain_names if domains is None else list(domains):
        best = report.best(domain, fraction, ENCODER_ROLE)
        out.append(
            AttackOutcome(
                family,
                attack,
                strength,
                domain,
                list(best.validation_accuracy),
                list(best.test_accuracy),
                best.usual_choice,
            )
        )
    return out


def _check_columns(domains: Mapping[str, DatasetDict], authorized: Any | None, config: AdaptiveConfig) -> None:
    """Every split names the configured image and label columns, the authorized sample its image column: said
    before any attack runs."""
    wanted = (config.image_column, config.label_column)
    for name, dataset in domains.items():
        for split, part in dataset.items():
            missing = [c for c in wanted if c not in part.column_names]
            if missing:
                raise AdaptiveError(
                    f"domain {name!r} split {split!r} has no column(s) {missing} (columns: {part.column_names}); "
                    "set AdaptiveConfig.image_column / label_column"
                )
    if authorized is not None and config.image_column not in authorized.column_names:
        raise AdaptiveError(
            f"the authorized sample has no {config.image_column!r} column (columns: {authorized.column_names})"
        )


class PixelCache:
    """Pixel values of images already preprocessed by ``encoder``, keyed by their pixels' checksums.

    Weight sanitisers change the weights, not the preprocessing, so the feature extraction of every sanitised copy
    (and of the untouched encoder) reuses the pixels of the first; the images of a split arrive in the same batches
    each time.
    """

    def __init__(self, encoder: EncoderAdapter) -> None:
        self.encoder = encoder
        self._pixels: dict[tuple[int, ...], torch.Tensor] = {}

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        key = tuple(zlib.crc32(image.tobytes()) for image in images) + (len(images),)
        if key not in self._pixels:
            self._pixels[key] = self.encoder.preprocess(images)
        return self._pixels[key]

    def view(self, model: EncoderAdapter) -> EncoderAdapter:
        """``model`` (same weights) preprocessing through this cache."""
        return EncoderAdapter(model.backbone, pooling=model.pooling, preprocess_fn=self.preprocess, name=model.name)


def reference_stats(authorized: Any, share: float, seed: int = 0, image_column: str = "image") -> ChannelStats:
    """Channel statistics of ``share`` of the attacker's authorized images (at least one image)."""
    count = max(1, int(round(share * len(authorized))))
    return domain_stats(authorized, image_column, max_images=count, seed=seed)


def _baselines(given, victim, domains, config: AdaptiveConfig, encoder) -> dict[str, dict[str, float]]:
    """Clean fresh-probe accuracies of the victim and the twin: given, or probed here (victim only if given)."""
    if given is not None:
        return {d: dict(given[d]) for d in domains if d in given}
    if victim is None:
        twin = run_probe_suite(encoder.random_init_twin(0), domains, config.probe_config(), random_twin=False)
        return {d: {"random_twin": twin.best(d, config.fraction).mean} for d in domains}
    report = run_probe_suite(load_encoder(victim), domains, config.probe_config(), random_twin=True)
    return {
        d: {
            "victim": report.best(d, config.fraction).mean,
            "random_twin": report.best(d, config.fraction, TWIN_ROLE).mean,
        }
        for d in domains
    }


def run_adaptive_suite(
    encoder: Any,
    domains: Mapping[str, DatasetDict] | Sequence[Any],
    config: AdaptiveConfig | None = None,
    authorized: Any | None = None,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    victim: Any | None = None,
    output_dir: str | os.PathLike | None = None,
    fresh_probes: ProbeReport | None = None,
    victim_outliers: Mapping[str, int] | None = None,
    victim_piled_up: Mapping[str, int] | None = None,
) -> AdaptiveReport:
    """Attack ``encoder`` on each (prohibited) domain with every adaptive family; the encoder is never modified.

    Args:
        encoder: an ``EncoderAdapter``, a saved encoder folder or a Hub id (the released, locked encoder).
        domains: the attacker's labelled data, ``{name: DatasetDict}`` with train and test splits, or domain specs.
        config: the attacker's moves and budget (:class:`AdaptiveConfig`).
        authorized: a ``Dataset`` of authorized images the attacker holds; ``config.reference_share`` of it gives
            the channel statistics the matching transforms aim for (those transforms are skipped without it).
        baselines: ``{domain: {"victim": acc, "random_twin": acc}}`` clean fresh-probe accuracies (e.g. from the
            main job's "before" probes); else they are probed here, the victim only when ``victim`` is given.
        victim: the unlocked encoder, for the baselines and (suite "full") its own fine-tuning row.
        fresh_probes: the probe suite's report on this same encoder and data at ``config.fraction`` with the same
            seeds (the main job's "after" probes): used as the fresh-probe family instead of probing again.
        output_dir: if given, ``adaptive_report.json`` and ``.md`` are written there.
        victim_outliers: the unlocked encoder's per-tensor counts beyond 6 robust std
            (:func:`~hf_encoderlock.probing.sanitize.count_outliers`), when the victim itself is not at hand (the main
            job counts them before the lock changes the encoder in place); counted on ``victim`` otherwise.
        victim_piled_up: the same for its entries on piled-up values
            (:func:`~hf_encoderlock.probing.sanitize.count_piled_up`).
    """
    from tqdm.auto import tqdm

    config = config or AdaptiveConfig()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with torch_threads(config.num_threads):
        encoder = load_encoder(encoder)
        probe_config = config.probe_config()
        resolved = load_domains(domains, probe_config)
        _check_columns(resolved, authorized, config)
        reference = (
            reference_stats(authorized, config.reference_share, config.transform_seed, config.image_column)
            if authorized is not None
            else None
        )
        transforms = [t for t in config.transforms if reference is not None or not TRANSFORMS[t].needs_reference]
        grid_problem = patch_grid_problem(encoder)
        learned_transforms = [
            t for t in config.learned_transforms if grid_problem is None or not LEARNED_TRANSFORMS[t].needs_patches
        ]
        for skipped, reason in (
            ([t for t in config.transforms if t not in transforms], "they need an authorized sample (authorized=)"),
            ([t for t in config.learned_transforms if t not in learned_transforms], grid_problem),
        ):
            if skipped:
                logger.warning("adaptive attacks: skipping %s: %s", ", ".join(skipped), reason)
        sources = {
            d: domain_stats(ds["train"], config.image_column, seed=config.transform_seed) for d, ds in resolved.items()
        }
        tick = time.perf_counter()
        base = _baselines(baselines, victim, resolved, config, encoder)
        timings["baselines"] = time.perf_counter() - tick

        steps = 1 + sum(len(SANITIZERS[s].strengths) for s in config.sanitizers)
        learned = sum(len(LEARNED_TRANSFORMS[t].strengths) for t in learned_transforms)
        steps += len(resolved) * (sum(len(TRANSFORMS[t].strengths) for t in transforms) + learned + int(config.combine))
        bar = tqdm(total=steps, desc="adaptive attacks", disable=not config.progress)
        outcomes: list[AttackOutcome] = []

        def probe(model, data, family: str, attack: str, strength: float | None) -> None:
            report = run_probe_suite(model, data, probe_config, random_twin=False)
            outcomes.extend(_outcomes(report, family, attack, strength, config.fraction))
            bar.set_postfix_str(f"{family}: {attack}")
            bar.update(1)

        def transform_view(model, attack: str, strength: float, domain: str) -> EncoderAdapter:
            """``model`` behind a fixed transform, or behind a learned one fitted through ``model`` itself."""
            if attack not in LEARNED_TRANSFORMS:
                return transformed_encoder(model, attack, strength, config.transform_seed, reference, sources[domain])
            train = resolved[domain]["train"]
            labels = np.asarray(train[config.label_column])
            validation = [s.validation for s in split_training_rows(labels, probe_config.split_plan())]
            rows = fit_rows(len(train), validation, LearnedMapFit().max_images, config.transform_seed)
            feature = train.features.get(config.label_column)
            classes = getattr(feature, "num_classes", None) or int(labels.max()) + 1
            images = train.select(rows)[config.image_column]
            input_map = fit_learned_transform(
                attack, strength, model, images, labels[rows], config.transform_seed, num_classes=classes
            )
            return input_mapped_encoder(model, input_map, f"{attack} {strength:g}")

        # The untouched encoder and every sanitised copy see the same pixels: preprocess each image once.
        pixels = PixelCache(encoder)
        tick = time.perf_counter()
        if fresh_probes is not None:
            outcomes.extend(_outcomes(fresh_probes, FRESH_PROBE, "none", None, config.fraction, resolved))
            bar.update(1)
        else:
            probe(pixels.view(encoder), resolved, FRESH_PROBE, "none", None)
        timings[FRESH_PROBE] = time.perf_counter() - tick
        tick = time.perf_counter()
        for name in config.sanitizers:
            for strength in SANITIZERS[name].strengths:
                sanitised = sanitize_module(encoder, name, strength, config.noise_seed)
                probe(pixels.view(sanitised), resolved, SANITIZE, name, strength)
        timings[SANITIZE] = time.perf_counter() - tick
        tick = time.perf_counter()
        for domain, dataset in resolved.items():  # per domain: the statistics matching starts from its own
            for name in transforms:
                for strength in TRANSFORMS[name].strengths:
                    probe(transform_view(encoder, name, strength, domain), {domain: dataset}, TRANSFORM, name, strength)
            for name in learned_transforms:
                for strength in LEARNED_TRANSFORMS[name].strengths:
                    probe(transform_view(encoder, name, strength, domain), {domain: dataset}, TRANSFORM, name, strength)
        timings[TRANSFORM] = time.perf_counter() - tick
        partial = AdaptiveReport(encoder.name, {}, base, {}, outcomes)
        if config.combine and config.sanitizers and (transforms or learned_transforms):
            tick = time.perf_counter()
            for domain, dataset in resolved.items():
                sanitiser, transform = (
                    partial.best_in_family(domain, SANITIZE),
                    partial.best_in_family(domain, TRANSFORM),
                )
                # a learned transform is fitted again, through the sanitised encoder it is shown to
                sanitised = sanitize_module(encoder, sanitiser.attack, sanitiser.strength, config.noise_seed)
                model = transform_view(sanitised, transform.attack, transform.strength, domain)
                probe(model, {domain: dataset}, COMBINED, f"{sanitiser.label} + {transform.label}", None)
            timings[COMBINED] = time.perf_counter() - tick
        bar.close()

        finetune: list[FinetuneOutcome] = []
        if config.suite == "full":
            tick = time.perf_counter()
            finetune = _finetune_families(encoder, resolved, config, partial, victim)
            timings[FINETUNE] = time.perf_counter() - tick

    info = {
        d: {"n_train_split": len(ds["train"]), "n_test": len(ds["test"]), "reference_images": None}
        for d, ds in resolved.items()
    }
    if authorized is not None:
        for entry in info.values():
            entry["reference_images"] = max(1, int(round(config.reference_share * len(authorized))))
    timings["total"] = time.perf_counter() - started
    report = AdaptiveReport(
        encoder.name,
        info,
        base,
        asdict(config),
        outcomes,
        finetune,
        {k: v for k, v in count_outliers(encoder.backbone).items() if v},
        timings,
        package_versions(),
        dict(victim_outliers) if victim_outliers is not None else _victim_counts(victim, count_outliers),
        {k: v for k, v in count_piled_up(encoder.backbone).items() if v},
        dict(victim_piled_up) if victim_piled_up is not None else _victim_counts(victim, count_piled_up),
    )
    if output_dir is not None:
        report.save(output_dir)
    return report


def _victim_counts(victim: Any | None, count: Callable[[nn.Module], dict[str, int]]) -> dict[str, int] | None:
    if victim is None:
        return None
    return count(load_encoder(victim).backbone)


def _finetune_families(
    encoder, domains, config: AdaptiveConfig, probed: AdaptiveReport, victim
) -> list[FinetuneOutcome]:
    """Patient full fine-tuning, re-initialisation then fine-tuning, and fine-tuning after the sanitiser the attacker
    chose on validation; each against training from scratch on the same images and learning-rate grid."""
    rows: list[FinetuneOutcome] = []
    for domain, dataset in domains.items():
        data = {domain: dataset}
        main = run_attack_suite(encoder, data, config.attack_config(("full", "reinit")), random_twin=True)
        runs = [("full", "full", main), ("reinit", "reinit", main)]
        sanitiser = probed.best_in_family(domain, SANITIZE)
        if sanitiser is not None:
            model = sanitize_module(encoder, sanitiser.attack, sanitiser.strength, config.noise_seed)
            sanitised = run_attack_suite(model, data, config.attack_config(("full",)), random_twin=False)
            runs.append((f"{sanitiser.label} -> full", "full", sanitised))
        if victim is not None:  # the reviewer's reference: the same attacker on the unlocked encoder
            unlocked = run_attack_suite(load_encoder(victim), data, config.attack_config(("full",)), random_twin=False)
            runs.append(("victim: full", "full", unlocked))
        for fraction in config.finetune_fractions:
            scratch = main.score(SCRATCH, domain, fraction).test_accuracy
            for label, attack, report in runs:
                score = report.score(attack, domain, fraction)
                rows.append(
                    FinetuneOutcome(
                        label, domain, fraction, list(score.test_accuracy), list(score.hyperparameters), list(scratch)
                    )
                )
    return rows
