"""Every domain pair: lock each built-in domain against each other one, with the default and the paper's objective.

Run by hand (expensive: one full lock + probe pass per cell, a few minutes each on a 2-core CPU):

    python benchmarks/domain_matrix.py --output benchmarks/results/domain_matrix
    python benchmarks/domain_matrix.py --authorized mnist --prohibited syn-digits letters --objectives paper
    python benchmarks/domain_matrix.py --output benchmarks/results/domain_matrix --summarize

A cell is (objective, authorized, prohibited) with authorized and prohibited two different domains among
``mnist``, ``mnist-m``, ``syn-digits`` and ``letters`` (12 pairs per objective). ``digits`` is only probed as a
further domain: the victim's advantage over its random-init twin on it is within probe noise, so it can be neither
locked nor kept measurably. Each cell runs :func:`~hf_encoderlock.experiment.run_lock_experiment` with the lock of
``examples/configs/default.yaml`` as is (``information``, the default objective) or with ``objective: paper`` at the
same budget (same rounds, weights per round, layers and steps; ``prohibited_poolings: null``, the paper's
single-pooling view), and probes before and after at 100% of the attacker's data with ``--probe_seeds`` seeds.

The run is resumable: every finished cell writes ``cells/<objective>__<authorized>__<prohibited>.json`` under
``--output`` and is skipped when that file exists, so an interrupted run keeps what it finished. The lock's own
output folders (victim, locked encoder, ``report.json``) go under ``--runs_dir`` (git-ignored by default) and the
victim's features and built domains are cached once under ``--cache_dir``. The summary (``--summarize``, also run
after every cell) gathers whatever cells exist into ``domain_matrix.json``, ``domain_matrix.md`` and
``domain_matrix.png``; cells that were not run are listed as such and drawn blank.

Measures are the attacker's best fresh probe (linear / MLP / kNN over CLS and mean pooling, chosen on a validation
split of the attacker's own training images, scored on the test split, which nothing here selects on):
advantage removed on the prohibited domain and kept on the authorized one, against the victim and its twin.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "examples" / "configs" / "default.yaml"
LOCK_DOMAINS: tuple[str, ...] = ("mnist", "mnist-m", "syn-digits", "letters")
REPORT_ONLY_DOMAINS: tuple[str, ...] = ("digits",)
OBJECTIVES: tuple[str, ...] = ("information", "paper")
OBJECTIVE_LABELS = {"information": "default lock (information)", "paper": "paper's objective"}
FRACTION = 1.0
MIN_MEASURABLE_ADVANTAGE = 0.03  # as in hf_encoderlock.probing.lock_report: below it the ratios are probe noise
CELLS_SUBDIR = "cells"
#: advantage removed by fresh probes, kept by fresh probes, removed in the worst case of the adaptive suite's
#: probe-only families (sanitised weights, transformed inputs, both): the lock's strength
MEASURES: tuple[str, ...] = ("advantage_removed", "advantage_kept", "adaptive_worst_removed")
SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG = "domain_matrix.json", "domain_matrix.md", "domain_matrix.png"


# --------------------------------------------------------------------------------------------------- arguments
def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _domain(name: str) -> str:
    canonical = _canonical(name)
    if canonical in REPORT_ONLY_DOMAINS:
        raise argparse.ArgumentTypeError(
            f"{name!r} is reported as a further domain only (the victim's advantage on it is within probe noise); "
            f"lock domains are: {', '.join(LOCK_DOMAINS)}"
        )
    if canonical not in LOCK_DOMAINS:
        raise argparse.ArgumentTypeError(f"unknown domain {name!r}; choose among: {', '.join(LOCK_DOMAINS)}")
    return canonical


def _objective(name: str) -> str:
    canonical = name.strip().lower()
    if canonical not in OBJECTIVES:
        raise argparse.ArgumentTypeError(f"unknown objective {name!r}; choose among: {', '.join(OBJECTIVES)}")
    return canonical


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/domain_matrix", help="Cells and summary files.")
    parser.add_argument(
        "--runs_dir", default="outputs/domain_matrix/runs", help="Each cell's lock output (models, report.json)."
    )
    parser.add_argument(
        "--cache_dir", default="outputs/domain_matrix/cache", help="Shared cache of built domains and features."
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Base YAML of lock_vit.py arguments.")
    parser.add_argument(
        "--label",
        default=None,
        help="Name of the information-objective lock in the summary (default: 'default lock (information)'; give "
        "one whenever --config is not the default YAML).",
    )
    parser.add_argument("--objectives", nargs="+", type=_objective, default=list(OBJECTIVES))
    parser.add_argument("--authorized", nargs="+", type=_domain, default=list(LOCK_DOMAINS))
    parser.add_argument("--prohibited", nargs="+", type=_domain, default=list(LOCK_DOMAINS))
    parser.add_argument("--probe_seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--num_rounds", type=_positive_int, default=None, help="Rounds per lock (default: YAML's).")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1).")
    parser.add_argument("--summarize", action="store_true", help="Only gather existing cells into the summary.")
    parser.add_argument(
        "--adaptive_dir",
        default=None,
        help="A folder of later adaptive attacks on the cells' locks (DIR/<cell>/adaptive_report.json, e.g. from "
        "benchmarks/adaptive_attacks.py --suite probe): where one exists, a cell's worst case is read from it "
        "instead of from the run's report.json (which is left as it is).",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    options = parser.parse_args(argv)
    for key in ("objectives", "authorized", "prohibited", "probe_seeds"):
        setattr(options, key, list(dict.fromkeys(getattr(options, key))))
    if not options.summarize and not planned_cells(options):
        pairs = f"authorized {options.authorized} x prohibited {options.prohibited}"
        parser.error(f"no cell to run: {pairs} has no pair of two different domains (authorized == prohibited)")
    return options


def planned_cells(options: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(objective, authorized, prohibited) in run order: objective first, then authorized, then prohibited."""
    return [
        (objective, authorized, prohibited)
        for objective in options.objectives
        for authorized in options.authorized
        for prohibited in options.prohibited
        if authorized != prohibited
    ]


def cell_name(objective: str, authorized: str, prohibited: str) -> str:
    return f"{objective}__{authorized}__{prohibited}"


# ------------------------------------------------------------------------------------------------- one cell
def _configs(options: argparse.Namespace, objective: str, authorized: str, prohibited: str, run_dir: Path):
    from transformers import HfArgumentParser

    from hf_encoderlock.experiment import LockExperimentArguments
    from hf_encoderlock.lock.config import EncoderLockConfig

    values: dict[str, Any] = yaml.safe_load(Path(options.config).read_text())
    values.update(
        authorized=authorized,
        prohibited=prohibited,
        report_domains=list(REPORT_ONLY_DOMAINS),
        probe_fractions=[FRACTION],
        probe_seeds=options.probe_seeds,
        cache_dir=options.cache_dir,
        output_dir=str(run_dir),
        report_to="none",
        disable_tqdm=True,
    )
    if objective != "information":  # same budget and schedule; only the objective (and its pooling view) change
        values.update(objective=objective, prohibited_poolings=None)
    if options.num_rounds is not None:
        values["num_rounds"] = options.num_rounds
    parser = HfArgumentParser((LockExperimentArguments, EncoderLockConfig))
    experiment, lock = parser.parse_dict(values)
    return experiment, lock, values


def _best_by_domain(probe: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    return {b["domain"]: b for b in probe["best"].get(role, []) if math.isclose(float(b["fraction"]), FRACTION)}


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 1e-12 else None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cell_from_report(report: dict[str, Any], objective: str, authorized: str, prohibited: str) -> dict[str, Any]:
    """The compact, committed record of one cell, from the run's ``report.json``."""
    before, after = report["probe_before"], report["probe_after"]
    victim, twin, locked = (
        _best_by_domain(before, "encoder"),
        _best_by_domain(before, "random_twin"),
        _best_by_domain(after, "encoder"),
    )
    rows = []
    for row in report["table"]:
        domain = row["domain"]
        per_seed = {
            "seeds": victim[domain]["seeds"],
            "victim": victim[domain]["test_accuracy"],
            "random_twin": twin[domain]["test_accuracy"],
            "locked": locked[domain]["test_accuracy"],
        }
        measure = {"prohibited": "advantage_removed", "authorized": "advantage_kept"}.get(row["role"] or "")
        if measure is not None:
            per_seed[measure] = [
                _ratio(v - lk if measure == "advantage_removed" else lk - t, v - t)
                for v, t, lk in zip(per_seed["victim"], per_seed["random_twin"], per_seed["locked"])
            ]
        rows.append(
            {
                "domain": domain,
                "role": row["role"] or "other",
                "random_twin": row["random_twin"],
                "victim": row["victim"],
                "locked": row["locked"],
                "victim_advantage": row["victim"] - row["random_twin"],
                "measurable": row["victim"] - row["random_twin"] >= MIN_MEASURABLE_ADVANTAGE,
                "advantage_removed": _finite(row.get("advantage_removed")),
                "advantage_kept": _finite(row.get("advantage_kept")),
                "lock_own_head": row.get("lock_own_head"),
                "attacker_choice_victim": row.get("attacker_choice_victim"),
                "attacker_choice_locked": row.get("attacker_choice_locked"),
                "per_seed": per_seed,
            }
        )
    by_role = {r["role"]: r for r in rows if r["role"] in ("authorized", "prohibited")}
    lock = report["lock"]
    # the attacker who knows the method (the main job's adaptive suite, probe-only families), where it ran
    adaptive = report.get("adaptive") or {}
    worst = next((w for w in adaptive.get("worst_case", []) if w["domain"] == prohibited), {})
    return {
        "objective": objective,
        "authorized": authorized,
        "prohibited": prohibited,
        "advantage_removed": by_role["prohibited"]["advantage_removed"],
        "advantage_kept": by_role["authorized"]["advantage_kept"],
        "adaptive_worst_removed": _finite(worst.get("worst_removed")),
        "adaptive_worst_accuracy": _finite(worst.get("worst_accuracy")),
        "adaptive_worst_attack": f"{worst['worst_family']}: {worst['worst_attack']}" if worst else None,
        "telltale_tensors": adaptive.get("telltale_tensors"),
        "weights_changed": lock["mask"]["count"],
        "fraction_changed": lock["mask"]["fraction"],
        "num_parameters": lock["mask"]["num_parameters"],
        "rounds_completed": lock["rounds_completed"],
        "best_round": lock.get("best_round"),
        "lock_seed": lock.get("seed"),
        "poolings_seen_by_lock": lock.get("poolings"),
        "hyperparameters": lock.get("hyperparameters"),
        "probe_fraction": FRACTION,
        "probe_seeds": before["config"].get("seeds"),
        "domain_seed": report["experiment"].get("domain_seed"),
        "rows": rows,
        "verdict": report.get("verdict", {}),
        "timings": report.get("timings", {}),
        "versions": lock.get("versions"),
    }


def run_cell(options: argparse.Namespace, objective: str, authorized: str, prohibited: str, output: Path) -> Path:
    from hf_encoderlock.experiment import run_lock_experiment

    name = cell_name(objective, authorized, prohibited)
    runs_dir = Path(options.runs_dir).resolve()
    run_dir = runs_dir / name
    report_path = run_dir / "report.json"
    experiment, lock, values = _configs(options, objective, authorized, prohibited, run_dir)
    started = time.perf_counter()
    if report_path.is_file():  # finished earlier, killed before its cell file was written
        report = json.loads(report_path.read_text())
        ran = False
    else:
        if run_dir.exists() and run_dir.parent == runs_dir:  # an interrupted run of this script: start it again
            shutil.rmtree(run_dir)
        report = run_lock_experiment(experiment, lock)
        ran = True
    adaptive_source = None
    later = Path(options.adaptive_dir) / name / "adaptive_report.json" if options.adaptive_dir else None
    if later is not None and later.is_file():
        adaptive = json.loads(later.read_text())
        if adaptive.get("victim_outliers_beyond_6") is None:  # counted against the victim by the main job only
            adaptive["telltale_tensors"] = (report.get("adaptive") or {}).get("telltale_tensors")
        report = {**report, "adaptive": adaptive}
        adaptive_source = os.path.relpath(later, REPO) if later.resolve().is_relative_to(REPO) else str(later)
    cell = cell_from_report(report, objective, authorized, prohibited)
    cell.update(
        adaptive_source=adaptive_source,
        wall_seconds=time.perf_counter() - started if ran else None,
        finished_at=datetime.fromtimestamp(report_path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        run_dir=os.path.relpath(run_dir, REPO) if run_dir.is_relative_to(REPO) else str(run_dir),
        command=" ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        torch_threads=options.threads,
        config=values,
    )
    target = output / CELLS_SUBDIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".json.tmp")
    staging.write_text(json.dumps(cell, indent=2, default=str))
    staging.replace(target)  # a cell file exists only once complete
    return target


# ------------------------------------------------------------------------------------------------- summary
def load_cells(output: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    cells = {}
    for path in sorted((output / CELLS_SUBDIR).glob("*.json")):
        cell = json.loads(path.read_text())
        cells[(cell["objective"], cell["authorized"], cell["prohibited"])] = cell
    return cells


def _pct(value: Any, digits: int = 1) -> str:
    number = _finite(value)
    return "-" if number is None else f"{100 * number:.{digits}f}"


def _row(cell: dict[str, Any], role: str) -> dict[str, Any] | None:
    return next((r for r in cell["rows"] if r["role"] == role), None)


def _seed_range(row: dict[str, Any], measure: str) -> str:
    values = [v for v in row["per_seed"].get(measure, []) if _finite(v) is not None]
    if len(values) < 2:
        return ""
    return f" [{_pct(min(values), 0)}, {_pct(max(values), 0)}]"


def _accuracies(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{_pct(row['victim'])} / {_pct(row['random_twin'])} / {_pct(row['locked'])}"


def _worst(cell: dict[str, Any]) -> str:
    if cell.get("adaptive_worst_removed") is None:
        return "not measured"
    accuracy, removed = _pct(cell["adaptive_worst_accuracy"]), _pct(cell["adaptive_worst_removed"])
    return f"{accuracy}% ({cell['adaptive_worst_attack']}): {removed}"


def _count(items: list[str] | None) -> str:
    return "-" if items is None else str(len(items))


def _objectives_present(cells: dict, requested: list[str]) -> list[str]:
    present = {key[0] for key in cells}
    return [o for o in OBJECTIVES if o in present or o in requested]


def summarize(output: Path, objectives: list[str], label: str | None = None) -> dict[str, Any]:
    """Gather the finished cells into ``domain_matrix.json``, ``.md`` and ``.png``; ``label`` names the
    information-objective lock (its YAML is not the default)."""
    cells = load_cells(output)
    objectives = _objectives_present(cells, objectives)
    all_cells = [(o, a, p) for o in objectives for a in LOCK_DOMAINS for p in LOCK_DOMAINS if a != p]
    matrices = {
        objective: {
            measure: {
                a: {
                    p: (cells[(objective, a, p)].get(measure) if (objective, a, p) in cells else None)
                    for p in LOCK_DOMAINS
                    if p != a
                }
                for a in LOCK_DOMAINS
            }
            for measure in MEASURES
        }
        for objective in objectives
    }
    summary = {
        "description": (
            "EncoderLock on every pair of built-in lock domains: attacker's best fresh probe at 100% of the "
            "attacker's data, mean over probe seeds; advantage removed on the prohibited domain, kept on the "
            "authorized one (fractions, not percent). digits is probed as a further domain only."
        ),
        "lock_domains": list(LOCK_DOMAINS),
        "report_only_domains": list(REPORT_ONLY_DOMAINS),
        "objectives": objectives,
        "labels": {o: (label if label and o == "information" else OBJECTIVE_LABELS[o]) for o in objectives},
        "finished": [cell_name(*key) for key in all_cells if key in cells],
        "not_run": [cell_name(*key) for key in all_cells if key not in cells],
        "matrices": matrices,
        "cells": [cells[key] for key in all_cells if key in cells],
    }
    (output / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str))
    (output / SUMMARY_MD).write_text(summary_markdown(summary, cells, all_cells))
    plot_matrix(summary, output / SUMMARY_PNG)
    return summary


def _matrix_table(summary: dict[str, Any], objective: str, measure: str, cells: dict) -> list[str]:
    lines = [
        "| authorized \\ prohibited | " + " | ".join(LOCK_DOMAINS) + " |",
        "|---|" + "---|" * len(LOCK_DOMAINS),
    ]
    for a in LOCK_DOMAINS:
        entries = []
        for p in LOCK_DOMAINS:
            if a == p:
                entries.append("")
            elif (objective, a, p) not in cells:
                entries.append("not run")
            else:
                cell = cells[(objective, a, p)]
                if measure == "adaptive_worst_removed":
                    entries.append(_pct(cell.get(measure)))
                    continue
                row = _row(cell, "prohibited" if measure == "advantage_removed" else "authorized")
                entries.append(f"{_pct(cell[measure])}{_seed_range(row, measure)}")
        lines.append(f"| **{a}** | " + " | ".join(entries) + " |")
    return lines


def summary_markdown(summary: dict[str, Any], cells: dict, all_cells: list) -> str:
    lines = [
        "# Every domain pair",
        "",
        "Attacker's best fresh probe (linear / MLP / kNN over CLS and mean pooling, chosen on a validation split of "
        "the attacker's training images, scored on test) at 100% of the attacker's data, mean over probe seeds; in "
        "brackets the range over seeds. Advantage removed = (victim - locked) / (victim - twin) on the prohibited "
        "domain; advantage kept = (locked - twin) / (victim - twin) on the authorized one (targets 90% / 97%).",
        "",
        f"Finished {len(summary['finished'])} of {len(all_cells)} cells."
        + (f" Not run: {', '.join(summary['not_run'])}." if summary["not_run"] else ""),
        "",
    ]
    for objective in summary["objectives"]:
        label = summary["labels"][objective]
        for measure, title in (
            ("advantage_removed", "removed (prohibited)"),
            ("advantage_kept", "kept (authorized)"),
            ("adaptive_worst_removed", "removed in the worst case of an attacker who knows the method (prohibited)"),
        ):
            if measure == "adaptive_worst_removed" and not any(
                cells[key].get(measure) is not None for key in cells if key[0] == objective
            ):
                continue
            lines += [f"## {label}: advantage {title}, %", ""]
            lines += _matrix_table(summary, objective, measure, cells)
            lines.append("")
    lines += [
        "## Per cell: accuracies (victim / random-init twin / locked, %)",
        "",
        "| Objective | Authorized | Prohibited | Authorized: victim / twin / locked | Kept | "
        "Prohibited: victim / twin / locked | Removed | Worst case (attack): removed | Tell-tale tensors | "
        "digits: victim / twin / locked | Weights changed | Time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in all_cells:
        objective, a, p = key
        if key not in cells:
            lines.append(f"| {objective} | {a} | {p} | not run | | | | | | | | |")
            continue
        cell = cells[key]
        auth, proh = _row(cell, "authorized"), _row(cell, "prohibited")
        other = next((r for r in cell["rows"] if r["domain"] in REPORT_ONLY_DOMAINS), None)
        seconds = cell.get("wall_seconds") or cell["timings"].get("total_s")
        weights = f"{cell['weights_changed']:,} ({100 * cell['fraction_changed']:.2f}%)"
        lines.append(
            f"| {objective} | {a} | {p} | {_accuracies(auth)} | {_pct(cell['advantage_kept'])} | "
            f"{_accuracies(proh)} | {_pct(cell['advantage_removed'])} | {_worst(cell)} | "
            f"{_count(cell.get('telltale_tensors'))} | {_accuracies(other)} | {weights} | "
            f"{seconds / 60:.1f} min |"
        )
    lines += [
        "",
        "digits is a further domain only: the victim's advantage over its twin there is a point or two, within probe "
        "noise, so no ratio is given for it. Times are wall-clock on a 2-core CPU, with the torch threads each cell "
        "records (`torch_threads`).",
        "",
    ]
    return "\n".join(lines)


def plot_matrix(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    objectives = summary["objectives"]
    n = len(LOCK_DOMAINS)
    panels = [
        ("advantage_removed", "removed (prohibited)", "Reds", 0.0),
        ("advantage_kept", "kept (authorized)", "Greens", 0.7),
    ]
    measured = summary["matrices"][objectives[0]].get("adaptive_worst_removed", {}) if objectives else {}
    if any(value is not None for row in measured.values() for value in row.values()):
        panels.append(("adaptive_worst_removed", "removed, worst case (adaptive)", "Reds", 0.0))
    figure, axes = plt.subplots(
        len(objectives), len(panels), figsize=(6 * len(panels), 4.5 * len(objectives)), squeeze=False
    )
    for axes_row, objective in zip(axes, objectives):
        for axis, (measure, title, cmap_name, low) in zip(axes_row, panels):
            values = np.full((n, n), np.nan)
            for i, a in enumerate(LOCK_DOMAINS):
                for j, p in enumerate(LOCK_DOMAINS):
                    value = summary["matrices"][objective][measure].get(a, {}).get(p)
                    if value is not None:
                        values[i, j] = 100 * value
            cmap = plt.get_cmap(cmap_name).copy()
            cmap.set_bad("white")
            image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=100 * low, vmax=100)
            for i, a in enumerate(LOCK_DOMAINS):
                for j, p in enumerate(LOCK_DOMAINS):
                    if a == p:
                        axis.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="lightgrey"))
                        axis.text(j, i, "-", ha="center", va="center", color="grey")
                    elif math.isnan(values[i, j]):
                        axis.text(j, i, "not run", ha="center", va="center", color="grey", fontsize=8)
                    else:
                        dark = values[i, j] > 100 * low + 0.6 * (100 - 100 * low)
                        axis.text(
                            j, i, f"{values[i, j]:.1f}", ha="center", va="center", color="white" if dark else "black"
                        )
            axis.set_xticks(range(n), LOCK_DOMAINS)
            axis.set_yticks(range(n), LOCK_DOMAINS)
            axis.set_xlabel("prohibited")
            axis.set_ylabel("authorized")
            axis.set_title(f"{summary['labels'][objective]}\nadvantage {title}, %", fontsize=10)
            bar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
            if low > 0:
                bar.set_label(f"colour clipped below {100 * low:.0f}%; numbers exact", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    if not options.summarize:
        os.environ.setdefault("OMP_NUM_THREADS", str(options.threads))  # torch is first imported below
        import torch

        torch.set_num_threads(options.threads)
        for objective, authorized, prohibited in planned_cells(options):
            name = cell_name(objective, authorized, prohibited)
            if (output / CELLS_SUBDIR / f"{name}.json").is_file():
                print(f"[domain_matrix] {name}: done earlier, skipped", flush=True)
                continue
            print(f"[domain_matrix] {name}: started {datetime.now(timezone.utc):%H:%M:%S} UTC", flush=True)
            path = run_cell(options, objective, authorized, prohibited, output)
            cell = json.loads(path.read_text())
            print(
                f"[domain_matrix] {name}: removed {_pct(cell['advantage_removed'])}%, kept "
                f"{_pct(cell['advantage_kept'])}%, {cell['weights_changed']} weights, "
                f"{(cell['wall_seconds'] or cell['timings'].get('total_s', 0)) / 60:.1f} min",
                flush=True,
            )
            summarize(output, options.objectives, options.label)
    summary = summarize(output, options.objectives, options.label)
    print(f"[domain_matrix] summary: {len(summary['finished'])} cells finished, {len(summary['not_run'])} not run")


if __name__ == "__main__":
    main()
