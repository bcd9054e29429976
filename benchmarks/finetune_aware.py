"""Does the fine-tuning-aware lock resist fine-tuning attacks better, and at what cost?

Run by hand (expensive: two full lock runs and three fine-tuning attack suites):

    python benchmarks/finetune_aware.py --output benchmarks/results/finetune_aware

Locks the default task twice with the defaults of ``examples/configs/default.yaml``: as is, and with
``finetune_aware_steps`` simulated attacker steps. Then runs the fine-tuning attack suite (full, last-k blocks,
LoRA, each with a fresh head, and training from scratch as the floor) on the victim and both locked encoders at
``--fraction`` of the attacker's share of each lock domain (the images the locks never used), scored on the test
splits. Writes ``finetune_aware.json`` and ``finetune_aware.md`` (accuracies, lock times, fresh-probe measures).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_encoderlock.experiment import LockExperimentArguments, _load_domains, run_lock_experiment, split_for_lock
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.probing.attacks import AttackConfig, run_attack_suite

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "default.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/finetune_aware")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Base YAML of lock_vit.py arguments.")
    parser.add_argument("--steps", type=int, default=2, help="finetune_aware_steps of the fine-tuning-aware lock.")
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="finetune_aware_lr (sign step of the simulated attacker)."
    )
    parser.add_argument("--weight", type=float, default=1.0, help="finetune_aware_weight.")
    parser.add_argument("--fraction", type=float, default=0.1, help="Attacker's training fraction.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cache_dir", default=None)
    return parser.parse_args()


def _configs(options: argparse.Namespace, name: str, output: Path, **lock_overrides: Any):
    values: dict[str, Any] = yaml.safe_load(Path(options.config).read_text())
    values.update(probe_fractions=[options.fraction, 1.0], probe_seeds=options.seeds, report_domains=[])
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


def main() -> None:
    options = parse_args()
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    runs = {
        "default": {},
        "finetune_aware": {
            "finetune_aware_steps": options.steps,
            "finetune_aware_lr": options.lr,
            "finetune_aware_weight": options.weight,
        },
    }
    results: dict[str, Any] = {"options": vars(options), "locks": {}, "attacks": {}}
    experiment = None
    for name, overrides in runs.items():
        experiment, lock = _configs(options, name, output / "runs", **overrides)
        started = time.perf_counter()
        report = run_lock_experiment(experiment, lock)
        results["locks"][name] = {
            "seconds": time.perf_counter() - started,
            "lock_seconds": report["timings"]["lock_s"],
            "table": report["table"],
        }
        print(json.dumps({"lock": name, "seconds": results["locks"][name]["seconds"]}), flush=True)
    domains = _attacker_domains(experiment)
    config = AttackConfig(fractions=(options.fraction,), seeds=tuple(options.seeds), epochs=options.epochs)
    encoders = {
        "victim": output / "runs" / "default" / "victim",
        "locked": output / "runs" / "default" / "locked",
        "finetune_aware_locked": output / "runs" / "finetune_aware" / "locked",
    }
    for name, folder in encoders.items():
        report = run_attack_suite(
            str(folder),
            domains,
            config,
            random_twin=(name == "victim"),
            authorized=experiment.authorized_domains(),
            prohibited=[experiment.prohibited],
            output_dir=output / "attacks" / name,
        )
        results["attacks"][name] = [
            {"attack": s.attack, "domain": s.domain, "fraction": s.fraction, "test_accuracy": s.test_accuracy}
            for s in report.scores
        ]
        print(json.dumps({"attacked": name}), flush=True)
    (output / "finetune_aware.json").write_text(json.dumps(results, indent=2, default=str))
    (output / "finetune_aware.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Fine-tuning-aware lock against fine-tuning attacks",
        "",
        f"Attacker's training fraction {results['options']['fraction']}; test accuracy (mean over seeds).",
        "",
        "| Encoder | Attack | Domain | Test accuracy |",
        "|---|---|---|---|",
    ]
    for encoder, scores in results["attacks"].items():
        for s in scores:
            mean = sum(s["test_accuracy"]) / len(s["test_accuracy"])
            lines.append(f"| {encoder} | {s['attack']} | {s['domain']} | {100 * mean:.1f}% |")
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
