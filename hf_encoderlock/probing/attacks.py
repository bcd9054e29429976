"""Fine-tuning attacks: the attacker may train the encoder itself, not just a head on frozen features.

Each attack deep-copies the encoder, puts a fresh linear head on its pooled features and trains on preprocessed
images of one domain, at several fractions of that domain's training split:

- ``"full"``: every encoder weight trains;
- ``"last_k"``: only the last ``k`` transformer blocks (and whatever follows them, e.g. the final norm);
- ``"lora"``: LoRA adapters (``peft``) on the attention projections; base weights stay frozen;
- ``"frozen"``: the encoder stays frozen (an end-to-end linear probe on images, for reference);
- ``"reinit"``: the blocks a lock may change (``reinit_blocks``; the patch embedding is block -1) re-initialised at
  random, then every weight trains: the attacker who knows which blocks the lock's defaults edit.

The same architecture trained from scratch (``random_twin``) on the same data is the floor no lock can push an
attacker below. Learning rate and epoch count are chosen on a validation split carved from train (the probe
suite's splits, :func:`hf_encoderlock.probing.suite.split_training_rows`), never on test. The default attacker is
patient: AdamW with one learning rate for the encoder and the head, every one of ``epochs`` epochs trained (no early
stop) and the best epoch on validation kept (never the untrained head), at least ``min_steps_per_epoch`` steps per
epoch. A learning curve over training fractions is summarised by its area (:func:`learning_curve_auc`, NTP's
SLC-AUC).
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import ATTACK_REPORT_STEM, REPORT_FORMAT_VERSION
from .._utils import markdown_row, optional_import, package_versions, percent
from ..data.domains import train_validation_split
from ..data.lock_tensors import preprocess_domain
from ..encoders import load_encoder
from .heads import accuracy, torch_threads
from .probe_report import SeedAccuracies, fraction_label, report_json, save_report_files
from .suite import ProbeConfig, SplitPlan, load_domains, split_training_rows

ATTACKS = ("full", "last_k", "lora", "frozen", "reinit")
SCRATCH = "scratch"
ATTENTION_PROJECTION = re.compile(
    r"(^|\.)(attention|attn|self_attn|self_attention)(\.(attention|self|output))?\."
    r"(q_proj|k_proj|v_proj|o_proj|out_proj|query|key|value|qkv|proj|dense)$"
)


class AttackError(ValueError):
    """An attack that cannot run as configured; the message names the problem."""


@dataclass
class AttackConfig:
    """Every setting of the fine-tuning attack suite."""

    attacks: tuple[str, ...] = field(default=("full", "last_k", "lora"), metadata={"help": f"Attacks, of {ATTACKS}."})
    fractions: tuple[float, ...] = field(
        default=(0.01, 0.1, 1.0),
        metadata={"help": "Fractions of the training split (after validation) to attack with."},
    )
    seeds: tuple[int, ...] = field(
        default=(0,), metadata={"help": "Seeds: each draws its own validation split, subsample, head init and order."}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of the training split carved out (stratified) for validation."}
    )
    min_train_per_class: int = field(
        default=1, metadata={"help": "Fewest training examples per class at any fraction."}
    )
    full_lrs: tuple[float, ...] = field(default=(1e-4, 1e-3), metadata={"help": "AdamW lrs for full fine-tuning."})
    last_k_lrs: tuple[float, ...] = field(default=(1e-4, 1e-3), metadata={"help": "AdamW lrs for last-k fine-tuning."})
    lora_lrs: tuple[float, ...] = field(default=(1e-3, 1e-2), metadata={"help": "AdamW lrs for the LoRA adapters."})
    frozen_lrs: tuple[float, ...] = field(
        default=(1e-3, 1e-2), metadata={"help": "AdamW lrs for the frozen attack's head."}
    )
    reinit_lrs: tuple[float, ...] = field(
        default=(1e-4, 1e-3), metadata={"help": "AdamW lrs for fine-tuning after re-initialisation."}
    )
    reinit_blocks: tuple[int, ...] = field(
        default=(-1, 0, 1),
        metadata={
            "help": "Blocks the reinit attack re-initialises (-1: everything before the block stack, i.e. the "
            "patch embedding); the default is the lock's default candidate blocks, which the attacker knows."
        },
    )
    scratch_lrs: tuple[float, ...] = field(
        default=(1e-4, 1e-3), metadata={"help": "AdamW lrs for training from scratch (the floor)."}
    )
    head_lr: float | None = field(
        default=None,
        metadata={"help": "AdamW lr of the fresh linear head; None: the run's lr (one lr for every weight)."},
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay on the trained encoder weights (AdamW's default)."}
    )
    epochs: int = field(
        default=10, metadata={"help": "Epochs trained; the best epoch (1..epochs) is chosen on validation."}
    )
    patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many epochs without a validation gain; None: train every epoch."},
    )
    min_steps_per_epoch: int = field(
        default=10, metadata={"help": "Optimiser steps per epoch at least (small fractions repeat their data)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Images per optimiser step."})
    eval_batch_size: int = field(default=256, metadata={"help": "Images per forward pass when scoring."})
    last_k: int = field(default=1, metadata={"help": "Blocks trained by the last_k attack."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_targets: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "Module names (or regex) wrapped by LoRA; None: the attention projections, found by pattern."
        },
    )
    max_train_examples: int | None = field(
        default=None, metadata={"help": "Cap on each domain's training split before splitting (stratified; speed)."}
    )
    max_test_examples: int | None = field(default=None, metadata={"help": "Cap on each domain's test split."})
    train_split: str = field(default="train", metadata={"help": "Split the attacker trains (and validates) on."})
    test_split: str = field(default="test", metadata={"help": "Split the chosen attack is scored on."})
    domain_seed: int = field(default=0, metadata={"help": "Seed passed to load_domain for named domains."})
    random_twin_seed: int = field(default=0, metadata={"help": "Seed of the encoder's random-init twin (scratch)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (None: leave as is); restored."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm bar over the training runs."})

    def __post_init__(self) -> None:
        self.attacks = tuple(self.attacks)
        self.fractions = tuple(float(f) for f in self.fractions)
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)
        self.reinit_blocks = tuple(int(b) for b in self.reinit_blocks)
        for name in ("full_lrs", "last_k_lrs", "lora_lrs", "frozen_lrs", "reinit_lrs", "scratch_lrs"):
            setattr(self, name, tuple(float(lr) for lr in getattr(self, name)))
        checks = [
            (set(self.attacks) <= set(ATTACKS), f"attacks must be a subset of {ATTACKS}"),
            (bool(self.fractions) and all(0.0 < f <= 1.0 for f in self.fractions), "fractions must be in (0, 1]"),
            (bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds must be distinct, not empty"),
            (0.0 < self.validation_fraction < 1.0, "validation_fraction must be in (0, 1)"),
            (all(self.lrs(a) for a in (*ATTACKS, SCRATCH)), "every learning-rate grid needs at least one value"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.eval_batch_size >= 1, "epochs/batch sizes >= 1"),
            (self.last_k >= 1 and self.lora_r >= 1, "last_k and lora_r must be >= 1"),
            (self.min_train_per_class >= 1 and self.min_steps_per_epoch >= 1, "minimums must be >= 1"),
            (self.patience is None or self.patience >= 1, "patience must be None or >= 1"),
            (self.head_lr is None or self.head_lr > 0, "head_lr must be None or > 0"),
            (bool(self.reinit_blocks) and min(self.reinit_blocks) >= -1, "reinit_blocks must be indices >= -1"),
        ]
        for ok, message in checks:
            if not ok:
                raise AttackError(f"AttackConfig: {message}")

    def split_plan(self) -> SplitPlan:
        """The validation part and training fractions of the attacker's training split."""
        return SplitPlan(tuple(self.seeds), tuple(self.fractions), self.validation_fraction, self.min_train_per_class)

    def lrs(self, attack: str) -> tuple[float, ...]:
        """The learning-rate grid of ``attack`` (``"scratch"`` included)."""
        return getattr(self, f"{attack}_lrs")


# ------------------------------------------------------------------------------------------------- curve area
def learning_curve_auc(fractions: Sequence[float], accuracies: Sequence[float]) -> float:
    """Area under accuracy against training fraction, on a log-fraction axis normalised to [0, 1] (trapezoid).

    With one fraction the area is that accuracy. NaN accuracies give NaN.
    """
    if len(fractions) != len(accuracies) or not fractions:
        raise ValueError("fractions and accuracies must be non-empty and of equal length")
    order = np.argsort(np.asarray(fractions, dtype=float))
    x = np.log(np.asarray(fractions, dtype=float)[order])
    y = np.asarray(accuracies, dtype=float)[order]
    if len(x) == 1 or x[-1] == x[0]:
        return float(y.mean())
    x = (x - x[0]) / (x[-1] - x[0])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


# -------------------------------------------------------------------------------------------- model surgery
def transformer_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, ModuleList)`` of the backbone's block stack: the longest ``ModuleList`` of identical module types."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise AttackError(f"{type(backbone).__name__} has no stack of blocks (ModuleList) to fine-tune")
    return best


def last_k_parameter_names(backbone: nn.Module, k: int) -> list[str]:
    """Parameters of the last ``k`` blocks plus every parameter registered after the block stack (final norm,
    pooler): what a "fine-tune the top of the network" attacker trains."""
    stack_name, blocks = transformer_blocks(backbone)
    if k > len(blocks):
        raise AttackError(f"last_k={k} but the backbone has only {len(blocks)} blocks")
    prefix = f"{stack_name}." if stack_name else ""
    chosen = {f"{prefix}{i}." for i in range(len(blocks) - k, len(blocks))}
    names, after_stack = [], False
    for name, _ in backbone.named_parameters():
        in_stack = name.startswith(prefix)
        if in_stack:
            after_stack = True
        if (in_stack and any(name.startswith(c) for c in chosen)) or (after_stack and not in_stack):
            names.append(name)
    return names


def block_parameter_names(backbone: nn.Module, blocks: Iterable[int]) -> list[str]:
    """Parameters of the given blocks of the stack; block -1 is every parameter registered before the stack (the
    patch embedding, CLS token and position embeddings)."""
    stack_name, stack = transformer_blocks(backbone)
    wanted = set(blocks)
    beyond = [b for b in wanted if b >= len(stack)]
    if beyond:
        raise AttackError(f"blocks {sorted(beyond)} asked for, but the backbone has only {len(stack)} blocks")
    prefix = f"{stack_name}." if stack_name else ""
    names, before_stack = [], True
    for name, _ in backbone.named_parameters():
        in_stack = name.startswith(prefix)
        before_stack = before_stack and not in_stack
        index = int(name[len(prefix) :].split(".", 1)[0]) if in_stack else None
        if (before_stack and -1 in wanted) or (index is not None and index in wanted):
            names.append(name)
    return names


def attention_projections(backbone: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` attention projections (q/k/v/o, query/key/value/dense, qkv/proj ...)."""
    names = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear) and ATTENTION_PROJECTION.search(n)]
    if not names:
        raise AttackError(f"no attention projections found in {type(backbone).__name__}; set AttackConfig.lora_targets")
    return names


def add_lora(backbone: nn.Module, config: AttackConfig) -> list[str]:
    """Inject LoRA adapters (in place) and freeze everything else; returns the wrapped module names."""
    peft = optional_import("peft", "attacks", "the LoRA fine-tuning attack")
    LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model

    targets = list(config.lora_targets) if config.lora_targets is not None else attention_projections(backbone)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
    )
    try:
        inject_adapter_in_model(lora, backbone)
    except ValueError as error:  # peft's NoMatchingPeftModuleError is a ValueError
        raise AttackError(f"LoRA targets {targets} matched no module: {error}") from error
    for name, param in backbone.named_parameters():
        param.requires_grad_("lora_" in name)
    wrapped = [n for n, m in backbone.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    if not wrapped:
        raise AttackError(f"LoRA targets {targets} matched no module")
    return wrapped


def prepare_attack(encoder, attack: str, config: AttackConfig, seed: int = 0):
    """A deep copy of ``encoder`` set up for ``attack`` (``"scratch"``: every weight trains); ``seed`` fixes the
    LoRA initialisation (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _prepare(copy.deepcopy(encoder), attack, config)


def _prepare(model, attack: str, config: AttackConfig):
    backbone = model.backbone
    if attack in ("full", SCRATCH):
        trainable = {n for n, _ in backbone.named_parameters()}
    elif attack == "last_k":
        trainable = set(last_k_parameter_names(backbone, config.last_k))
    elif attack == "frozen":
        trainable = set()
    elif attack == "reinit":
        trainable = {n for n, _ in backbone.named_parameters()}
        fresh = dict(model.random_init_twin(config.random_twin_seed).backbone.named_parameters())
        chosen = set(block_parameter_names(backbone, config.reinit_blocks))
        with torch.no_grad():
            for name, param in backbone.named_parameters():
                if name in chosen:
                    param.copy_(fresh[name])
    elif attack == "lora":
        add_lora(backbone, config)
        return model
    else:
        raise AttackError(f"unknown attack {attack!r}; choose one of {ATTACKS}")
    for name, param in backbone.named_parameters():
        param.requires_grad_(name in trainable)
    return model


# ---------------------------------------------------------------------------------------------- one training run
@dataclass
class _Data:
    pixels: torch.Tensor
    labels: torch.Tensor


class _Classifier(nn.Module):
    def __init__(self, encoder, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(encoder.feature_dim)
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(pixels))


@torch.no_grad()
def _classifier_accuracy(model: _Classifier, data: _Data, batch_size: int) -> float:
    model.eval()
    starts = range(0, len(data.labels), batch_size)
    predictions = [model(data.pixels[start : start + batch_size]).argmax(-1).cpu() for start in starts]
    return accuracy(torch.cat(predictions) if predictions else [], data.labels.cpu())


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_attack(
    model, train: _Data, validation: _Data, num_classes: int, lr: float, config: AttackConfig, seed: int
) -> tuple[_Classifier, float, int]:
    """Fine-tune ``model`` (already prepared) with a fresh linear head; returns the classifier restored to its best
    validation epoch, that validation accuracy and the epoch (1 to ``config.epochs``).

    The head trains at ``config.head_lr`` (``None``: at ``lr``, like the encoder) without weight decay; the encoder's
    trainable weights at ``lr`` with ``config.weight_decay``. Every epoch trains at least one step, and the untrained
    head (epoch 0) is never kept: an attacker always trains. Without ``config.patience`` every epoch runs.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        classifier = _Classifier(model, num_classes, generator)
        encoder_params = [p for p in model.parameters() if p.requires_grad]
        head_lr = lr if config.head_lr is None or not encoder_params else config.head_lr
        groups = [{"params": list(classifier.head.parameters()), "lr": head_lr, "weight_decay": 0.0}]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": lr, "weight_decay": config.weight_decay})
        optimizer = torch.optim.AdamW(groups)
        loss_fn = nn.CrossEntropyLoss()
        best_acc, best_epoch, best_state, stale = -1.0, 0, None, 0
        n = len(train.labels)
        steps = max(config.min_steps_per_epoch, math.ceil(n / config.batch_size))
        for epoch in range(1, config.epochs + 1):
            classifier.train()
            order = torch.cat(
                [torch.randperm(n, generator=generator) for _ in range(math.ceil(steps * config.batch_size / n))]
            )
            for step in range(steps):
                index = order[step * config.batch_size : (step + 1) * config.batch_size]
                if len(index) == 0:
                    break
                loss = loss_fn(classifier(train.pixels[index]), train.labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            acc = _classifier_accuracy(classifier, validation, config.eval_batch_size)
            if best_state is None or acc > best_acc:
                best_acc, best_epoch, best_state, stale = acc, epoch, _trainable_state(classifier), 0
            else:
                stale += 1
                if config.patience is not None and stale >= config.patience:
                    break
        classifier.load_state_dict(best_state, strict=False)
    classifier.eval()
    return classifier, best_acc, best_epoch


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class AttackScore(SeedAccuracies):
    """Test accuracy of one attack on one domain at one training fraction, one value per seed."""

    attack: str
    domain: str
    fraction: float
    n_train: int
    n_validation: int
    n_test: int
    seeds: list[int]
    test_accuracy: list[float]
    validation_accuracy: list[float]
    hyperparameters: list[dict[str, Any]]
    trainable_parameters: int


@dataclass
class AttackReport:
    """Everything one attack-suite run measured; see :func:`run_attack_suite`."""

    encoder: str
    domains: dict[str, dict[str, Any]]
    config: dict[str, Any]
    scores: list[AttackScore] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def attacks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.attack for s in self.scores))

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(sorted({s.fraction for s in self.scores}))

    def select(self, attack: str | None = None, domain: str | None = None, fraction: float | None = None):
        return [
            s
            for s in self.scores
            if (attack is None or s.attack == attack)
            and (domain is None or s.domain == domain)
            and (fraction is None or math.isclose(s.fraction, fraction))
        ]

    def score(self, attack: str, domain: str, fraction: float) -> AttackScore:
        found = self.select(attack, domain, fraction)
        if not found:
            raise KeyError(f"no score for attack={attack!r}, domain={domain!r}, fraction={fraction}")
        return found[0]

    def curve(self, attack: str, domain: str) -> tuple[list[float], list[float]]:
        """``(fractions, mean test accuracies)`` of one attack on one domain."""
        scores = sorted(self.select(attack, domain), key=lambda s: s.fraction)
        return [s.fraction for s in scores], [s.mean for s in scores]

    def slc_auc(self, attack: str, domain: str) -> float:
        """Area under the learning curve (:func:`learning_curve_auc`) of the mean test accuracy."""
        return learning_curve_auc(*self.curve(attack, domain))

    def auc_table(self) -> list[dict[str, Any]]:
        """One row per (domain, attack): role, SLC-AUC, and the gap to training from scratch."""
        rows = []
        for domain, info in self.domains.items():
            floor = self.slc_auc(SCRATCH, domain) if self.select(SCRATCH, domain) else float("nan")
            for attack in self.attacks:
                if self.select(attack, domain):
                    auc = self.slc_auc(attack, domain)
                    rows.append(
                        {
                            "domain": domain,
                            "role": info.get("role"),
                            "attack": attack,
                            "slc_auc": auc,
                            "above_scratch": auc - floor,
                        }
                    )
        return rows

    def role_summary(self) -> dict[str, dict[str, float]]:
        """Mean SLC-AUC per role ("authorized" / "prohibited") and attack."""
        summary: dict[str, dict[str, list[float]]] = {}
        for row in self.auc_table():
            if row["role"]:
                summary.setdefault(row["role"], {}).setdefault(row["attack"], []).append(row["slc_auc"])
        return {role: {a: float(np.mean(v)) for a, v in attacks.items()} for role, attacks in summary.items()}

    # ---------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "encoder": self.encoder,
            "domains": self.domains,
            "config": self.config,
            "slc_auc": self.auc_table(),
            "role_summary": self.role_summary(),
            "timings": self.timings,
            "versions": self.versions,
            "scores": [dict(asdict(s), mean=s.mean, std=s.std) for s in self.scores],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackReport:
        names = set(AttackScore.__dataclass_fields__)
        scores = []
        for raw in data.get("scores", []):
            values = {k: v for k, v in raw.items() if k in names}
            for key in ("test_accuracy", "validation_accuracy"):
                values[key] = [float("nan") if v is None else v for v in values[key]]
            scores.append(AttackScore(**values))
        return cls(
            data["encoder"],
            data.get("domains", {}),
            data.get("config", {}),
            scores,
            data.get("timings", {}),
            data.get("versions", {}),
        )

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as strict JSON (NaN as null); also written to ``path`` when given."""
        return report_json(self.to_dict(), path)

    def to_markdown(self) -> str:
        return attack_report_markdown(self)

    def plot(self, path: str | os.PathLike) -> Path:
        return plot_attack_report(self, path)

    def save(self, output_dir: str | os.PathLike, stem: str = ATTACK_REPORT_STEM) -> dict[str, Path]:
        """Write ``{stem}.json``, ``{stem}.md`` and ``{stem}.png`` into ``output_dir``."""
        return save_report_files(self, output_dir, stem)


def attack_report_markdown(report: AttackReport) -> str:
    """Markdown: SLC-AUC per (domain, attack), then test accuracy per fraction."""
    config = report.config
    lines = [
        f"# Fine-tuning attack report: {report.encoder}",
        "",
        "Each attack trains a fresh linear head together with part of the encoder on labelled images; learning rate "
        "and epoch are chosen on a validation split carved from train, never on test. `scratch` trains the same "
        "architecture from random weights (the floor). "
        f"Test accuracy (%), mean ± std over {len(config.get('seeds', []))} "
        "seed(s). SLC-AUC: area under accuracy against log training fraction (normalised to [0, 1]).",
        "",
        "## SLC-AUC",
        "",
        markdown_row(["Domain", "Role", "Attack", "SLC-AUC (%)", "Above scratch (points)"]),
        markdown_row(["---"] * 5),
    ]
    for row in report.auc_table():
        lines.append(
            markdown_row(
                [
                    row["domain"],
                    row["role"] or "-",
                    row["attack"],
                    percent(row["slc_auc"], suffix=""),
                    percent(row["above_scratch"], suffix=""),
                ]
            )
        )
    fractions = report.fractions
    header = ["Domain", "Classes (chance %)", "Attack", *(fraction_label(f) for f in fractions), "Trainable params"]
    lines += [
        "",
        "## Test accuracy per training fraction",
        "",
        markdown_row(header),
        markdown_row(["---"] * len(header)),
    ]
    for domain, info in report.domains.items():
        for attack in report.attacks:
            cells, trainable = [], ""
            for fraction in fractions:
                found = report.select(attack, domain, fraction)
                cells.append(
                    f"{percent(found[0].mean, suffix='')} ± {percent(found[0].std, suffix='')}" if found else ""
                )
                trainable = f"{found[0].trainable_parameters:,}" if found else trainable
            classes = f"{info.get('num_classes', '?')} ({percent(info.get('chance', float('nan')), suffix='')})"
            lines.append(markdown_row([domain, classes, attack, *cells, trainable]))
    if report.timings:
        lines += ["", "## Timings (s)", "", markdown_row(["Step", "Seconds"]), markdown_row(["---", "---"])]
        lines += [markdown_row([name, f"{seconds:.2f}"]) for name, seconds in report.timings.items()]
    return "\n".join(lines) + "\n"


def plot_attack_report(report: AttackReport, path: str | os.PathLike) -> Path:
    """PNG: one panel per domain, test accuracy against training fraction per attack (scratch dashed)."""
    optional_import("matplotlib", "plots", "plotting an attack report")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    domains = list(report.domains)
    figure = Figure(figsize=(4.2 * max(len(domains), 1), 3.8), dpi=120)
    FigureCanvasAgg(figure)
    for i, domain in enumerate(domains):
        axes = figure.add_subplot(1, max(len(domains), 1), i + 1)
        for j, attack in enumerate(report.attacks):
            scores = sorted(report.select(attack, domain), key=lambda s: s.fraction)
            if not scores:
                continue
            axes.errorbar(
                [s.fraction for s in scores],
                [s.mean for s in scores],
                yerr=[s.std for s in scores],
                color=f"C{j % 10}",
                linestyle="--" if attack == SCRATCH else "-",
                marker="o",
                capsize=3,
                label=f"{attack} (AUC {percent(report.slc_auc(attack, domain), suffix='')})",
            )
        chance = report.domains[domain].get("chance")
        if chance is not None and math.isfinite(chance):
            axes.axhline(chance, color="grey", linestyle=":", linewidth=0.8)
        if report.fractions:
            axes.set_xscale("log")
            axes.set_xticks(list(report.fractions))
            axes.set_xticklabels([fraction_label(f) for f in report.fractions])
            axes.minorticks_off()
        role = report.domains[domain].get("role")
        axes.set_title(f"{domain}" + (f" ({role})" if role else ""), fontsize=9)
        axes.set_ylim(0.0, 1.02)
        axes.set_xlabel("fraction of the training split")
        if i == 0:
            axes.set_ylabel("test accuracy")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


# ---------------------------------------------------------------------------------------------------- the suite
def _capped(dataset, cap: int | None, seed: int):
    """A stratified subset of at most ``cap`` rows (the whole dataset when ``cap`` is None or large enough)."""
    if cap is None or len(dataset) <= cap:
        return dataset

    _, kept = train_validation_split(dataset, cap / len(dataset), seed)
    return kept


def _tensors(encoder, dataset, name: str) -> tuple[_Data, int]:
    data = preprocess_domain(encoder, dataset, name)
    return _Data(data.pixel_values, data.labels), data.num_classes


def run_attack_suite(
    encoder: Any,
    domains: Mapping[str, Any] | Sequence[Any],
    config: AttackConfig | None = None,
    random_twin: bool | Any = True,
    authorized: Iterable[str] = (),
    prohibited: Iterable[str] = (),
    output_dir: str | os.PathLike | None = None,
) -> AttackReport:
    """Run every attack of ``config`` on every domain, at every fraction and seed; the encoder is never modified.

    Args:
        encoder: an ``EncoderAdapter``, a saved encoder folder or a Hub id.
        domains: ``{name: DatasetDict}`` or domain specs for :func:`hf_encoderlock.data.domains.load_domain`.
        config: the attacker's settings (:class:`AttackConfig`).
        random_twin: ``True`` to also train ``encoder.random_init_twin(config.random_twin_seed)`` from scratch
            (the ``"scratch"`` floor), ``False`` to skip, or an encoder to train from scratch instead.
        authorized / prohibited: domain names, recorded as each domain's role (for the per-role SLC-AUC summary).
        output_dir: if given, ``attack_report.json``, ``.md`` and ``.png`` are written there.
    """
    from tqdm.auto import tqdm

    config = config or AttackConfig()
    authorized, prohibited = set(authorized), set(prohibited)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with torch_threads(config.num_threads):
        encoder = load_encoder(encoder)
        probe_config = ProbeConfig(
            domain_seed=config.domain_seed, train_split=config.train_split, test_split=config.test_split
        )
        resolved = load_domains(domains, probe_config)
        runs: list[tuple[str, Any]] = [(a, encoder) for a in config.attacks]
        if random_twin is not False and random_twin is not None:
            twin = (
                encoder.random_init_twin(config.random_twin_seed) if random_twin is True else load_encoder(random_twin)
            )
            runs.append((SCRATCH, twin))
        total = len(resolved) * len(config.fractions) * len(config.seeds) * sum(len(config.lrs(a)) for a, _ in runs)
        bar = tqdm(total=total, desc="fine-tuning attacks", disable=not config.progress)
        info: dict[str, dict[str, Any]] = {}
        scores: list[AttackScore] = []
        for name, dataset in resolved.items():
            tick = time.perf_counter()
            train_set = _capped(dataset[config.train_split], config.max_train_examples, config.domain_seed)
            test_set = _capped(dataset[config.test_split], config.max_test_examples, config.domain_seed)
            train, num_classes = _tensors(encoder, train_set, name)
            test, _ = _tensors(encoder, test_set, name)
            timings[f"preprocess/{name}"] = time.perf_counter() - tick
            splits = split_training_rows(train.labels.numpy(), config.split_plan())
            counts = np.bincount(test.labels.numpy(), minlength=num_classes)
            role = "authorized" if name in authorized else "prohibited" if name in prohibited else None
            info[name] = {
                "role": role,
                "num_classes": num_classes,
                "chance": float(counts.max() / max(len(test.labels), 1)),
                "n_train_split": len(train.labels),
                "n_test": len(test.labels),
            }
            for attack, source in runs:
                tick = time.perf_counter()
                for fraction in config.fractions:
                    per_seed, trainable = [], 0
                    for split in splits:
                        rows = torch.as_tensor(split.train[fraction])
                        val_rows = torch.as_tensor(split.validation)
                        part = _Data(train.pixels[rows], train.labels[rows])
                        validation = _Data(train.pixels[val_rows], train.labels[val_rows])
                        best = None
                        for lr in config.lrs(attack):
                            model = prepare_attack(source, attack, config, seed=split.seed)
                            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                            classifier, val_acc, epoch = train_attack(
                                model, part, validation, num_classes, lr, config, seed=split.seed
                            )
                            if best is None or val_acc > best[0]:
                                test_acc = _classifier_accuracy(classifier, test, config.eval_batch_size)
                                best = (val_acc, test_acc, {"lr": lr, "epochs": epoch})
                            bar.update(1)
                        per_seed.append(best)
                    scores.append(
                        AttackScore(
                            attack=attack,
                            domain=name,
                            fraction=fraction,
                            n_train=len(splits[0].train[fraction]),
                            n_validation=len(splits[0].validation),
                            n_test=len(test.labels),
                            seeds=[s.seed for s in splits],
                            test_accuracy=[b[1] for b in per_seed],
                            validation_accuracy=[b[0] for b in per_seed],
                            hyperparameters=[b[2] for b in per_seed],
                            trainable_parameters=trainable + num_classes * (encoder.feature_dim + 1),
                        )
                    )
                timings[f"{attack}/{name}"] = time.perf_counter() - tick
        bar.close()
    timings["total"] = time.perf_counter() - started
    config_dict = asdict(config)
    if config.lora_targets is None and "lora" in config.attacks:
        config_dict["lora_targets_resolved"] = attention_projections(encoder.backbone)
    report = AttackReport(
        getattr(encoder, "name", type(encoder).__name__), info, config_dict, scores, timings, package_versions()
    )
    if output_dir is not None:
        report.save(output_dir)
    return report
