"""Trade-off curve: weights changed against advantage removed (prohibited) and kept (authorized), per objective.

Run by hand (expensive: one full lock + probe pass per grid point):

    python benchmarks/lock_tradeoff.py --output benchmarks/results/lock_tradeoff
    python benchmarks/lock_tradeoff.py --objectives information --budgets 0.003 0.01 --probe_seeds 0

For every objective and every budget (a fraction of the encoder's parameters; ``dense`` = every candidate
weight) it runs :func:`~hf_encoderlock.experiment.run_lock_experiment` on the default task with the lock
defaults of ``examples/configs/default.yaml``, spreading the budget evenly over ``--rounds`` rounds, and records
the attacker's-best measures at 100% of the attacker's data. Writes ``tradeoff.json`` and ``tradeoff.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_encoderlock.experiment import LockExperimentArguments, run_lock_experiment
from hf_encoderlock.lock.config import EncoderLockConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "default.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/lock_tradeoff")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Base YAML of lock_vit.py arguments.")
    parser.add_argument("--objectives", nargs="+", default=["paper", "information"])
    parser.add_argument("--budgets", nargs="+", default=["0.001", "0.003", "0.01", "0.03", "dense"])
    parser.add_argument("--rounds", type=int, default=None, help="Rounds per lock (default: the config's).")
    parser.add_argument("--authorized", default=None)
    parser.add_argument("--prohibited", default=None)
    parser.add_argument("--probe_seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cache_dir", default=None)
    return parser.parse_args()


def _configs(options: argparse.Namespace, objective: str, budget: str, output: Path):
    values: dict[str, Any] = yaml.safe_load(Path(options.config).read_text())
    values.update(objective=objective, probe_fractions=[1.0], probe_seeds=options.probe_seeds, report_domains=[])
    if objective != "information":
        values["prohibited_poolings"] = None  # the information objective's multi-pooling view only
    values.update(output_dir=str(output / f"{objective}-{budget}"), report_to="none", disable_tqdm=True)
    for key in ("authorized", "prohibited", "cache_dir"):
        if getattr(options, key) is not None:
            values[key] = getattr(options, key)
    if options.rounds is not None:
        values["num_rounds"] = options.rounds
    parser = HfArgumentParser((LockExperimentArguments, EncoderLockConfig))
    experiment, lock = parser.parse_dict(values)
    return experiment, lock


def _apply_budget(lock: EncoderLockConfig, budget: str, num_parameters: int, num_candidate_layers: int) -> None:
    if budget == "dense":
        lock.weights_per_round = num_parameters  # every candidate weight in the first round
        lock.layers_per_round = num_candidate_layers
    else:
        lock.weights_per_round = max(1, round(float(budget) * num_parameters / lock.num_rounds))


def _encoder_sizes(experiment: LockExperimentArguments, lock: EncoderLockConfig) -> tuple[int, int]:
    from hf_encoderlock.encoders import load_encoder
    from hf_encoderlock.lock.selection import select_candidate_parameters
    from hf_encoderlock.victim import load_victim

    encoder = load_victim(experiment.cache_dir) if experiment.model is None else load_encoder(experiment.model)
    candidates = select_candidate_parameters(
        encoder.backbone, tuple(lock.candidate_module_types), lock.candidate_name_patterns, lock.candidate_blocks
    )
    return sum(p.numel() for p in encoder.parameters()), len(candidates)


def _point(report: dict[str, Any], objective: str, budget: str, seconds: float) -> dict[str, Any]:
    rows = [r for r in report["measures"]["rows"] if r["fraction"] == 1.0 and r["role"] is not None]
    return {
        "objective": objective,
        "budget": budget,
        "weights_changed": report["lock"]["mask"]["count"],
        "fraction_changed": report["lock"]["mask"]["fraction"],
        "advantage_removed": [r.get("advantage_removed") for r in rows if r["role"] == "prohibited"][0],
        "advantage_kept": [r.get("advantage_kept") for r in rows if r["role"] == "authorized"][0],
        "rows": rows,
        "seconds": seconds,
    }


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    for objective in dict.fromkeys(p["objective"] for p in points):
        mine = sorted((p for p in points if p["objective"] == objective), key=lambda p: p["fraction_changed"])
        x = [100 * p["fraction_changed"] for p in mine]
        axes[0].plot(x, [100 * p["advantage_removed"] for p in mine], "o-", label=objective)
        axes[1].plot(x, [100 * p["advantage_kept"] for p in mine], "o-", label=objective)
    for axis, title, target in zip(axes, ("advantage removed (prohibited)", "advantage kept (authorized)"), (90, 97)):
        axis.set_xscale("log")
        axis.axhline(target, color="grey", linestyle=":")
        axis.set_xlabel("encoder weights changed (%)")
        axis.set_ylabel("%")
        axis.set_title(title)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    options = parse_args()
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    for objective in options.objectives:
        for budget in options.budgets:
            experiment, lock = _configs(options, objective, budget, output / "runs")
            _apply_budget(lock, budget, *_encoder_sizes(experiment, lock))
            started = time.perf_counter()
            report = run_lock_experiment(experiment, lock)
            points.append(_point(report, objective, budget, time.perf_counter() - started))
            print(json.dumps({k: v for k, v in points[-1].items() if k != "rows"}), flush=True)
            (output / "tradeoff.json").write_text(json.dumps(points, indent=2))
    plot(points, output / "tradeoff.png")


if __name__ == "__main__":
    main()
