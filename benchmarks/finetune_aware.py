"""Does the fine-tuning-aware lock resist fine-tuning attacks better, and at what cost?

Run by hand (two lock runs, about 10 min, and three fine-tuning attack suites, about 25 min on one thread of a
2-core CPU with the settings below; all data at every seed on both domains is about twice that):

    python benchmarks/finetune_aware.py --output benchmarks/results/finetune_aware --threads 1 \
        --fractions 0.1 1.0 --seeds 0 1 2 --full_domains mnist-m

Locks the default task twice with the defaults of ``examples/configs/default.yaml``: as is, and with
``finetune_aware_steps`` simulated attacker steps. Then runs the fine-tuning attack suite with its default (patient)
attacker: a fresh linear head with full fine-tuning by default (``--attacks``), AdamW over a learning-rate grid,
up to ``AttackConfig.epochs`` epochs with the epoch chosen on validation, and training from scratch as the floor, on
the victim and both locked encoders at ``--fractions`` of the attacker's share of each lock domain (the images the
locks never used), scored on the test splits. Writes ``finetune_aware.json`` and ``finetune_aware.md`` (test and
validation accuracies per seed, the chosen hyper-parameters, lock times, fresh-probe measures) and each suite's own
report under ``attacks/``. ``--stage locks`` builds the locks only; a lock whose folder already holds a finished run
(``report.json``) is reused, and so is an attack report already written, so ``--stage attacks`` can follow later and
a run can be extended leg by leg (fractions below 1, then fraction 1). ``--variant NAME --steps/--lr/--weight``
builds another fine-tuning-aware lock beside the others (a lever to try) and writes ``NAME.json`` / ``NAME.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

from hf_encoderlock._files import ATTACK_REPORT_STEM
from hf_encoderlock.experiment import LockExperimentArguments, _load_domains, run_lock_experiment, split_for_lock
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.probing.attacks import AttackConfig, AttackReport, run_attack_suite

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "default.yaml"
ENCODERS = ("victim", "locked", "aware")  # the victim, the default lock, the fine-tuning-aware lock (--variant)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/finetune_aware")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Base YAML of lock_vit.py arguments.")
    parser.add_argument("--steps", type=int, default=2, help="finetune_aware_steps of the fine-tuning-aware lock.")
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="finetune_aware_lr (sign step of the simulated attacker)."
    )
    parser.add_argument("--weight", type=float, default=1.0, help="finetune_aware_weight.")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0], help="Attacker's fractions.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--attacks", nargs="+", default=["full"], help="Attacks of the suite (scratch is added).")
    parser.add_argument("--epochs", type=int, default=None, help="Maximum epochs (default: AttackConfig's).")
    parser.add_argument(
        "--full_lrs", type=float, nargs="+", help="Full fine-tuning's lr grid (default: AttackConfig's)."
    )
    parser.add_argument(
        "--scratch_lrs", type=float, nargs="+", help="The scratch floor's lr grid (default: AttackConfig's)."
    )
    parser.add_argument("--full_seeds", type=int, nargs="+", help="Seeds at fraction 1 (default: --seeds).")
    parser.add_argument("--full_domains", nargs="+", help="Domains attacked at fraction 1 (default: every one).")
    parser.add_argument(
        "--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS, help="Encoders attacked by this call."
    )
    parser.add_argument(
        "--variant",
        default="finetune_aware",
        help="Name of the fine-tuning-aware lock's run (a lever to try: its own name); results go to VARIANT.json/md.",
    )
    parser.add_argument("--stage", choices=("all", "locks", "attacks"), default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: leave as is).")
    parser.add_argument("--cache_dir", default=None)
    return parser.parse_args()


def _configs(options: argparse.Namespace, name: str, output: Path, **lock_overrides: Any):
    values: dict[str, Any] = yaml.safe_load(Path(options.config).read_text())
    values.update(probe_fractions=[0.1, 1.0], probe_seeds=[0], report_domains=[])
    values.update(output_dir=str(output / name), report_to="none", disable_tqdm=True, **lock_overrides)
    if options.cache_dir is not None:
        values["cache_dir"] = options.cache_dir
    return HfArgumentParser((LockExperimentArguments, EncoderLockConfig)).parse_dict(values)


def _attacker_domains(experiment: LockExperimentArguments) -> dict[str, Any]:
    """Each lock domain's attacker share of train (never seen by the lock) + its test split, as the lock run split
    them."""
    domains = _load_domains(experiment)
    names = [*experiment.authorized_domains(), experiment.prohibited]
    return {
        name: split_for_lock(domains[name], experiment.lock_share, experiment.max_lock_images, experiment.domain_seed)[
            1
        ]
        for name in names
    }


def _lock(options: argparse.Namespace, name: str, output: Path, overrides: dict[str, Any]):
    """Build (or reuse) one lock; returns its experiment arguments and lock summary (None: not built, and
    ``--stage attacks`` does not build it)."""
    experiment, lock = _configs(options, name, output / "runs", **overrides)
    folder = Path(lock.output_dir)
    if (folder / "report.json").exists() and (folder / "locked").is_dir():
        report = json.loads((folder / "report.json").read_text())
        seconds = report["timings"]["total_s"]
    elif options.stage == "attacks":
        return experiment, None
    else:
        started = time.perf_counter()
        report = run_lock_experiment(experiment, lock)
        seconds = time.perf_counter() - started
    summary = {"seconds": seconds, "lock_seconds": report["timings"]["lock_s"], "overrides": overrides}
    summary["table"] = report["table"]
    print(json.dumps({"lock": name, "seconds": seconds}), flush=True)
    return experiment, summary


def main() -> None:
    options = parse_args()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    runs = {
        "default": {},
        options.variant: {
            "finetune_aware_steps": options.steps,
            "finetune_aware_lr": options.lr,
            "finetune_aware_weight": options.weight,
        },
    }
    results: dict[str, Any] = {"options": vars(options), "locks": {}, "attacks": {}}
    experiment = None
    for name, overrides in runs.items():
        experiment, summary = _lock(options, name, output, overrides)
        if summary is not None:
            results["locks"][name] = summary
    if options.stage == "locks":
        return
    domains = _attacker_domains(experiment)
    small = tuple(f for f in options.fractions if f < 1.0)
    legs = {"small": (small, options.seeds, list(domains))} if small else {}
    if 1.0 in options.fractions:
        legs["full_data"] = ((1.0,), options.full_seeds or options.seeds, options.full_domains or list(domains))
    settings = {"attacks": tuple(options.attacks), "num_threads": options.threads}
    if options.epochs is not None:
        settings["epochs"] = options.epochs
    for grid in ("full_lrs", "scratch_lrs"):  # a stronger attacker than the default grid
        if getattr(options, grid):
            settings[grid] = tuple(getattr(options, grid))
    results["attack_config"] = asdict(AttackConfig(**settings))
    encoders = {
        "victim": ("victim", "default", "victim"),
        "locked": ("locked", "default", "locked"),
        f"{options.variant}_locked": ("aware", options.variant, "locked"),
    }
    for name, (key, run, subfolder) in encoders.items():
        for leg, (fractions, seeds, leg_domains) in legs.items():
            folder = output / "attacks" / name / leg
            if (folder / f"{ATTACK_REPORT_STEM}.json").exists():
                report = AttackReport.from_dict(json.loads((folder / f"{ATTACK_REPORT_STEM}.json").read_text()))
            elif key in options.encoders and (output / "runs" / run / subfolder).is_dir():
                config = AttackConfig(fractions=fractions, seeds=tuple(seeds), **settings)
                report = run_attack_suite(
                    str(output / "runs" / run / subfolder),
                    {d: domains[d] for d in leg_domains},
                    config,
                    random_twin=(name == "victim"),
                    authorized=experiment.authorized_domains(),
                    prohibited=[experiment.prohibited],
                    output_dir=folder,
                )
                print(json.dumps({"attacked": name, "leg": leg, "seconds": report.timings["total"]}), flush=True)
            else:
                continue
            results["attacks"].setdefault(name, []).extend(
                {
                    "attack": s.attack,
                    "domain": s.domain,
                    "fraction": s.fraction,
                    "n_train": s.n_train,
                    "seeds": s.seeds,
                    "test_accuracy": s.test_accuracy,
                    "validation_accuracy": s.validation_accuracy,
                    "hyperparameters": s.hyperparameters,
                }
                for s in report.scores
            )
            results.setdefault("attack_seconds", {})[f"{name}/{leg}"] = report.timings.get("total")
    (output / f"{options.variant}.json").write_text(json.dumps(results, indent=2, default=str))
    (output / f"{options.variant}.md").write_text(markdown(results))
    print(markdown(results))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    mean = _mean(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def markdown(results: dict[str, Any]) -> str:
    config = results.get("attack_config", {})
    lines = [
        "# Fine-tuning-aware lock against fine-tuning attacks",
        "",
        "Patient attacker (`AttackConfig` defaults): a fresh linear head and the encoder trained together with AdamW "
        f"(weight decay {config.get('weight_decay')}, batch {config.get('batch_size')}, at least "
        f"{config.get('min_steps_per_epoch')} steps per epoch), every lr of the grid, all {config.get('epochs')} "
        "epochs trained and the best epoch and lr chosen on a validation split carved from the attacker's images; "
        "scored on test. `scratch`: the victim's architecture from random weights (the floor). Test accuracy, mean "
        "± std over seeds; validation accuracy is what chose the settings.",
        "",
        "| Encoder | Attack | Domain | Fraction | Images | Seeds | Test accuracy | Validation | lr / epoch chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for encoder, scores in results["attacks"].items():
        for s in sorted(scores, key=lambda s: (s["attack"], s["domain"], s["fraction"])):
            test, val = s["test_accuracy"], s["validation_accuracy"]
            chosen = ", ".join(f"{h['lr']:g}/{h['epochs']}" for h in s["hyperparameters"])
            lines.append(
                f"| {encoder} | {s['attack']} | {s['domain']} | {s['fraction']:g} | {s['n_train']} "
                f"| {len(test)} | {100 * _mean(test):.1f}% ± {100 * _std(test):.1f} | {100 * _mean(val):.1f}% "
                f"| {chosen} |"
            )
    lines += ["", "| Lock | Lock time (s) | Domain | Advantage removed | Advantage kept |", "|---|---|---|---|---|"]
    for name, lock in results["locks"].items():
        for row in lock["table"]:
            if row["role"] is None:
                continue
            removed, kept = row.get("advantage_removed"), row.get("advantage_kept")
            lines.append(
                f"| {name} | {lock['lock_seconds']:.0f} | {row['domain']} "
                f"| {'-' if removed is None else f'{100 * removed:.1f}%'} "
                f"| {'-' if kept is None else f'{100 * kept:.1f}%'} |"
            )
    seconds = results.get("attack_seconds", {})
    if seconds:
        lines += ["", "Attack suite time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if v) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
