"""What an encoder that never saw the prohibited domain gives the adaptive attacker: a reference for every lock.

A lock tries to make the released encoder as useless on its prohibited domain as it would be had the owner never
trained on that domain. The encoder the owner would then have released is easy to build here: the built-in victim's
recipe (``hf_encoderlock.victim.VictimConfig``) less the prohibited domain, pre-trained with each seed given (0 is
the victim's own). This script builds that reference for each main-job run given, attacks it with the adaptive
attacker's probe-only suite on the run's own attacker data (``benchmarks/adaptive_attacks.py --run RUN --encoder
REFERENCE``), and tabulates how much of the victim's advantage each reference removes, then each run's lock beside
them.

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


def build_reference(cache_dir: Path, prohibited: str, seed: int) -> Path:
    """The victim's recipe less ``prohibited``, pre-trained with ``seed`` (once; reused from the cache after)."""
    folder = cache_dir / f"no_{prohibited}__seed{seed}"
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


def summarize_attacks(folder: Path, prohibited: str, seeds: list[int]) -> dict[str, Any]:
    """One attacker's data: victim and twin (fresh probes), the victim's worst case where it was attacked, and each
    attacked reference's fresh probe and worst case (at least one reference must have been attacked)."""
    rows = {
        str(seed): _worst(json.loads((folder / f"reference_seed{seed}" / REPORT).read_text()), prohibited)
        for seed in seeds
        if (folder / f"reference_seed{seed}" / REPORT).is_file()
    }
    references = {
        seed: {
            "fresh": row["fresh_probe"],
            "fresh_removed": row["fresh_probe_removed"],
            "worst": row["worst_accuracy"],
            "worst_removed": row["worst_removed"],
            "worst_attack": f"{row['worst_family']}: {row['worst_attack']}",
        }
        for seed, row in rows.items()
    }
    victim_report = folder / "victim" / REPORT
    victim = _worst(json.loads(victim_report.read_text()), prohibited) if victim_report.is_file() else None
    baselines = next(iter(rows.values()))  # every report of one attacker's data holds the same victim and twin
    return {
        "prohibited": prohibited,
        "victim": baselines["victim"],
        "random_twin": baselines["random_twin"],
        "victim_worst": victim["worst_accuracy"] if victim else None,
        "victim_worst_attack": f"{victim['worst_family']}: {victim['worst_attack']}" if victim else None,
        "references": references,
        "reference_worst_mean": statistics.mean(r["worst"] for r in references.values()),
        "reference_worst_removed_mean": statistics.mean(r["worst_removed"] for r in references.values()),
        "reference_fresh_removed_mean": statistics.mean(r["fresh_removed"] for r in references.values()),
    }


def summarize_lock(run: Path, prohibited: str, lock_adaptive: Path | None, attacks: dict[str, Any]) -> dict[str, Any]:
    """A run's lock: fresh probes and worst case removed, and the share of the gap between the victim's worst case
    and the references' mean worst case that the lock's worst case closes (100%: it leaves the attacker what an
    encoder that never saw the domain leaves)."""
    run_report = json.loads((run / "report.json").read_text())
    row = next(r for r in run_report["table"] if r["domain"] == prohibited and r["role"] == "prohibited")
    lock: dict[str, Any] = {"run": str(run), "fresh_removed": row["advantage_removed"]}
    if lock_adaptive is not None and (lock_adaptive / REPORT).is_file():
        source, report = lock_adaptive / REPORT, json.loads((lock_adaptive / REPORT).read_text())
    elif run_report.get("adaptive"):
        source, report = run / "report.json", run_report["adaptive"]
    else:
        return lock
    worst = _worst(report, prohibited)
    lock |= {key: worst[key] for key in ("worst_accuracy", "worst_removed", "worst_attack")}
    lock["worst_source"] = str(source)
    if attacks["victim_worst"] is not None:
        gap = attacks["victim_worst"] - attacks["reference_worst_mean"]
        lock["gap_closed"] = (attacks["victim_worst"] - worst["worst_accuracy"]) / gap if gap > 0 else None
    return lock


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def write_summary(attacks: dict[str, dict[str, Any]], locks: dict[str, dict[str, Any]], output: Path) -> None:
    """``never_trained_reference.json`` and ``.md``: the yardsticks per attacker's data, then each run's lock."""
    output.mkdir(parents=True, exist_ok=True)
    summary = {"attacks": attacks, "locks": locks}
    (output / "never_trained_reference.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# An encoder that never saw the prohibited domain, under the adaptive attacker",
        "",
        "Reference: the built-in victim's recipe less the prohibited domain, pre-trained with the seed shown, attacked "
        "with the adaptive probe-only suite on the run's attacker data. Test accuracy, %. Removed = (victim - accuracy)"
        " / (victim - twin), the victim and twin being the run's fresh-probe figures.",
        "",
        "## The yardsticks",
        "",
        "| Attacker's data | Victim: fresh / worst (attack) | Twin | Reference seed | Reference: fresh (removed) "
        "| Reference: worst (removed; attack) |",
        "|---|---|---|---|---|---|",
    ]
    for key, cell in attacks.items():
        victim = f"{_pct(cell['victim'])} / {_pct(cell['victim_worst'])} (`{cell['victim_worst_attack'] or '-'}`)"
        for seed, ref in cell["references"].items():
            lines.append(
                f"| {key} | {victim} | {_pct(cell['random_twin'])} | {seed} | {_pct(ref['fresh'])} "
                f"({_pct(ref['fresh_removed'])}) | {_pct(ref['worst'])} ({_pct(ref['worst_removed'])}; "
                f"`{ref['worst_attack']}`) |"
            )
        if len(cell["references"]) > 1:
            lines.append(
                f"| {key} | | | mean | ({_pct(cell['reference_fresh_removed_mean'])}) "
                f"| {_pct(cell['reference_worst_mean'])} ({_pct(cell['reference_worst_removed_mean'])}) |"
            )
    lines += [
        "",
        "## The locks",
        "",
        "Gap closed = (victim's worst case - lock's worst case) / (victim's worst case - the references' mean worst "
        "case): 100% means the lock leaves the attacker who knows the method what an encoder that never saw the "
        "domain leaves. The lock's worst case is from the source named in the JSON.",
        "",
        "| Run | Attacker's data | Lock: fresh removed | Lock: worst (removed; attack) | Reference: worst removed, "
        "mean | Gap closed |",
        "|---|---|---|---|---|---|",
    ]
    for name, lock in locks.items():
        cell = attacks[lock["attacks"]]
        lines.append(
            f"| {name} | {lock['attacks']} | {_pct(lock['fresh_removed'])} | {_pct(lock.get('worst_accuracy'))} "
            f"({_pct(lock.get('worst_removed'))}; `{lock.get('worst_attack', '-')}`) "
            f"| {_pct(cell['reference_worst_removed_mean'])} | {_pct(lock.get('gap_closed'))} |"
        )
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
    attacks, locks = {}, {}
    for run, experiment in experiments.items():
        prohibited, folder = experiment["prohibited"], attacks_folder(args.output, experiment)
        if not args.summarize:
            if args.attack_victim:
                attack(run, run / "victim", folder / "victim", prohibited, args.threads)
            for seed in args.pretrain_seeds:
                reference = build_reference(args.cache_dir, prohibited, seed)
                attack(run, reference, folder / f"reference_seed{seed}", prohibited, args.threads)
        if not any((folder / f"reference_seed{seed}" / REPORT).is_file() for seed in args.pretrain_seeds):
            print(f"{folder}: no reference attacked yet; {run} left out of the summary", file=sys.stderr)
            continue
        if folder.name not in attacks:
            attacks[folder.name] = summarize_attacks(folder, prohibited, args.pretrain_seeds)
        lock_adaptive = args.lock_adaptive_dir / run.name if args.lock_adaptive_dir else None
        locks[run.name] = {"attacks": folder.name} | summarize_lock(
            run, prohibited, lock_adaptive, attacks[folder.name]
        )
    if not attacks:
        raise SystemExit(f"no reference has been attacked under {args.output} yet; nothing to summarise")
    write_summary(attacks, locks, args.output)
    print((args.output / "never_trained_reference.md").read_text())


if __name__ == "__main__":
    main()
