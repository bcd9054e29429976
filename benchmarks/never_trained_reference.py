"""What an encoder that never saw the prohibited domain gives the adaptive attacker: a reference for every lock.

A lock tries to make the released encoder as useless on its prohibited domain as it would be had the owner never
trained on that domain. The encoder the owner would then have released is easy to build here: the built-in victim's
recipe (``hf_encoderlock.victim.VictimConfig``) less the prohibited domain, pre-trained with the same seeds. This
script builds that reference for each main-job run given, attacks it with the adaptive attacker's probe-only suite on
the run's own attacker data (``benchmarks/adaptive_attacks.py --run RUN --encoder REFERENCE``), and tabulates, per run
and pre-training seed, how much of the victim's advantage the reference removes, beside what the run's lock removes.

    python benchmarks/never_trained_reference.py --runs RUN [RUN ...] --output OUT --cache_dir CACHE --threads 2
    python benchmarks/never_trained_reference.py --runs RUN --output OUT --cache_dir CACHE --pretrain_seeds 0 1 2
    python benchmarks/never_trained_reference.py --runs RUN ... --output OUT --summarize \\
        --lock_adaptive_dir benchmarks/results/domain_matrix_adaptive_single_batch/adaptive

References go under ``--cache_dir`` (``no_<domain>__seed<s>``, about 3.5 minutes each on 2 cores, built once); each
attack's ``adaptive_report.*`` (about 2 minutes each) under ``OUT/attacks/<authorized>__<prohibited>__<digest>/``
(``reference_seed<s>/``, and ``victim/`` with ``--attack_victim``), the digest naming the run's settings that decide
the attacker's data, so runs that share them (lock seeds of one task) share the attacks; a report that exists is not
run again, and ``--summarize`` never runs anything. The summary (``never_trained_reference.json`` / ``.md`` in
``OUT``) reads the lock's fresh-probe and worst-case figures from the run's ``report.json``, or, with
``--lock_adaptive_dir``, its worst case from ``DIR/<run folder name>/adaptive_report.json`` (a later attack of the
same lock).

The reference is a yardstick, not a bound: a lock may do worse for the attacker than never training on the domain
(the default lock does, under fresh probes), and a reference pre-trained on fewer images is not the same encoder
minus one domain. What it shows is how much of the victim's advantage on the prohibited domain comes from having
trained on it at all, and how much from what the other domains teach.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from hf_encoderlock._files import MODEL_WEIGHTS_FILE
from hf_encoderlock.victim import VictimConfig, pretrain_victim

REPO = Path(__file__).resolve().parents[1]
REPORT = "adaptive_report.json"


# the run's settings that decide the attacker's images and probes: runs that share them share the reference's attack
ATTACKER_DATA = ("authorized", "prohibited", "lock_share", "max_lock_images", "domain_seed", "probe_seeds")


def run_experiment(run: Path) -> dict[str, Any]:
    """A finished main job's experiment settings; refuses a run whose encoder is not the built-in victim (the only
    encoder whose recipe can be repeated without a domain)."""
    report_file = run / "report.json"
    if not report_file.is_file():
        raise SystemExit(f"{run}: no report.json; give the output folder of a finished main job")
    experiment = json.loads(report_file.read_text())["experiment"]
    if experiment.get("model"):
        raise SystemExit(f"{run}: locks {experiment['model']!r}; only the built-in victim's recipe can be repeated")
    if experiment["prohibited"] not in VictimConfig().domains:
        raise SystemExit(
            f"{run}: the victim never trained on {experiment['prohibited']!r}, so the reference would be the victim"
        )
    return experiment


def attacks_folder(output: Path, experiment: dict[str, Any]) -> Path:
    """``OUT/attacks/<authorized>__<prohibited>__<digest of the attacker's data settings>``."""
    settings = {key: experiment[key] for key in ATTACKER_DATA}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return output / "attacks" / f"{experiment['authorized']}__{experiment['prohibited']}__{digest}"


def reference_folder(cache_dir: Path, prohibited: str, seed: int) -> Path:
    return cache_dir / f"no_{prohibited}__seed{seed}"


def build_reference(cache_dir: Path, prohibited: str, seed: int) -> Path:
    """The victim's recipe less ``prohibited``, pre-trained with ``seed`` (once; reused from the cache after)."""
    folder = reference_folder(cache_dir, prohibited, seed)
    if not (folder / MODEL_WEIGHTS_FILE).is_file():
        base = VictimConfig()
        config = replace(base, domains=[d for d in base.domains if d != prohibited], seed=seed)
        pretrain_victim(config, output_dir=folder)
    return folder


def attack(run: Path, encoder: Path, out: Path, prohibited: str, threads: int) -> None:
    """The adaptive attacker's probe suite on ``encoder``, with ``run``'s attacker data and baselines."""
    if (out / REPORT).is_file():
        return
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "adaptive_attacks.py"),
        *("--run", str(run), "--encoder", str(encoder), "--out", str(out)),
        *("--suite", "probe", "--threads", str(threads), "--domains", prohibited),
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "attack.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def _worst(report: dict[str, Any], domain: str) -> dict[str, Any]:
    return next(row for row in report["worst_case"] if row["domain"] == domain)


def summarize_cell(
    run: Path, out: Path, prohibited: str, lock_adaptive: Path | None, victim_attacked: Path
) -> dict[str, Any]:
    """One run and pre-training seed: victim, twin, the reference's fresh probe and worst case, and the lock's; with
    the victim's own worst case (``victim_attacked``, where it was run), the share of the gap between the victim's and
    the reference's worst cases that the lock's worst case closes."""
    reference = _worst(json.loads((out / REPORT).read_text()), prohibited)
    run_report = json.loads((run / "report.json").read_text())
    row = next(r for r in run_report["table"] if r["domain"] == prohibited and r["role"] == "prohibited")
    lock = {"fresh_removed": row["advantage_removed"]}
    if lock_adaptive is not None and (lock_adaptive / REPORT).is_file():
        worst = _worst(json.loads((lock_adaptive / REPORT).read_text()), prohibited)
        lock |= {key: worst[key] for key in ("worst_accuracy", "worst_removed", "worst_attack")}
        lock["worst_source"] = str(lock_adaptive / REPORT)
    elif run_report.get("adaptive"):
        worst = _worst(run_report["adaptive"], prohibited)
        lock |= {key: worst[key] for key in ("worst_accuracy", "worst_removed", "worst_attack")}
        lock["worst_source"] = str(run / "report.json")
    victim_worst = None
    if (victim_attacked / REPORT).is_file():
        victim_worst = _worst(json.loads((victim_attacked / REPORT).read_text()), prohibited)["worst_accuracy"]
        if "worst_accuracy" in lock:
            gap = victim_worst - reference["worst_accuracy"]
            lock["worst_share_of_reference_gap"] = (victim_worst - lock["worst_accuracy"]) / gap if gap > 0 else None
    return {
        "victim": reference["victim"],
        "random_twin": reference["random_twin"],
        "reference_fresh": reference["fresh_probe"],
        "reference_fresh_removed": reference["fresh_probe_removed"],
        "reference_worst": reference["worst_accuracy"],
        "reference_worst_removed": reference["worst_removed"],
        "reference_worst_attack": f"{reference['worst_family']}: {reference['worst_attack']}",
        "victim_worst": victim_worst,
        "lock": lock,
        "run": str(run),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def write_summary(cells: dict[str, dict[str, Any]], output: Path) -> None:
    """``never_trained_reference.json`` and ``.md``: one row per run and seed, then the mean over seeds per pair."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "never_trained_reference.json").write_text(json.dumps(cells, indent=2) + "\n")
    lines = [
        "# An encoder that never saw the prohibited domain, under the adaptive attacker",
        "",
        "Reference: the built-in victim's recipe less the prohibited domain, pre-trained with the seed shown, attacked "
        "with the adaptive probe-only suite on the run's attacker data. Test accuracy, %. Removed = (victim - accuracy)"
        " / (victim - twin), the victim and twin being the run's fresh-probe figures. The lock's columns are the run's "
        "own (its worst case from the source named in the JSON). Gap closed = (victim's worst case - lock's worst "
        "case) / (victim's worst case - reference's worst case): 100% means the lock leaves the attacker no more than "
        "an encoder that never saw the domain would.",
        "",
        "| Run | Pair (authorized -> prohibited) | Reference seed | Victim: fresh / worst | Twin "
        "| Reference: fresh (removed) | Reference: worst (removed; attack) | Lock: fresh removed "
        "| Lock: worst removed (attack) | Gap closed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cell in cells.items():
        lock = cell["lock"]
        lines.append(
            f"| {name.rsplit('__', 1)[0]} | {cell['authorized']} -> {cell['prohibited']} | {cell['pretrain_seed']} "
            f"| {_pct(cell['victim'])} / {_pct(cell['victim_worst'])} | {_pct(cell['random_twin'])} "
            f"| {_pct(cell['reference_fresh'])} ({_pct(cell['reference_fresh_removed'])}) "
            f"| {_pct(cell['reference_worst'])} ({_pct(cell['reference_worst_removed'])}; "
            f"`{cell['reference_worst_attack']}`) | {_pct(lock['fresh_removed'])} "
            f"| {_pct(lock.get('worst_removed'))} (`{lock.get('worst_attack', '-')}`) "
            f"| {_pct(lock.get('worst_share_of_reference_gap'))} |"
        )
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, cell in cells.items():
        runs.setdefault(name.rsplit("__", 1)[0], []).append(cell)
    if any(len(group) > 1 for group in runs.values()):
        lines += ["", "Mean over the references' pre-training seeds, removed %:", ""]
        lines += ["| Run | Seeds | Reference fresh | Reference worst |", "|---|---|---|---|"]
        for run, group in runs.items():
            fresh = statistics.mean(c["reference_fresh_removed"] for c in group)
            worst = statistics.mean(c["reference_worst_removed"] for c in group)
            lines.append(f"| {run} | {len(group)} | {_pct(fresh)} | {_pct(worst)} |")
    (output / "never_trained_reference.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="Finished main jobs' output folders.")
    parser.add_argument("--output", type=Path, required=True, help="Where the attacks and the summary go.")
    parser.add_argument("--cache_dir", type=Path, help="Where references are built (required unless --summarize).")
    parser.add_argument("--pretrain_seeds", type=int, nargs="+", default=[0], help="Seeds of the references.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--attack_victim", action="store_true", help="Also attack each run's victim, for the gap-closed column."
    )
    parser.add_argument("--summarize", action="store_true", help="Only summarise the attacks already in --output.")
    parser.add_argument(
        "--lock_adaptive_dir",
        type=Path,
        help="Read each lock's worst case from DIR/<run folder name>/adaptive_report.json where there is one.",
    )
    args = parser.parse_args(argv)
    if not args.summarize and args.cache_dir is None:
        parser.error("--cache_dir is required to build references (or pass --summarize)")
    experiments = {run: run_experiment(run) for run in args.runs}  # every run checked before any work
    cells = {}
    for run, experiment in experiments.items():
        prohibited, folder = experiment["prohibited"], attacks_folder(args.output, experiment)
        if args.attack_victim and not args.summarize:
            attack(run, run / "victim", folder / "victim", prohibited, args.threads)
        for seed in args.pretrain_seeds:
            out = folder / f"reference_seed{seed}"
            if not args.summarize:
                attack(run, build_reference(args.cache_dir, prohibited, seed), out, prohibited, args.threads)
            if not (out / REPORT).is_file():
                print(f"{out}: no {REPORT} yet; left out of the summary", file=sys.stderr)
                continue
            lock_adaptive = args.lock_adaptive_dir / run.name if args.lock_adaptive_dir else None
            cell = summarize_cell(run, out, prohibited, lock_adaptive, folder / "victim")
            cells[f"{run.name}__seed{seed}"] = {
                "authorized": experiment["authorized"],
                "prohibited": prohibited,
                "pretrain_seed": seed,
                **cell,
            }
    write_summary(cells, args.output)
    print((args.output / "never_trained_reference.md").read_text())


if __name__ == "__main__":
    main()
