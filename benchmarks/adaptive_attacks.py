"""The adaptive attacker (knows the method) against a lock the main job made, on the attacker's own images.

Run by hand on the output folder of a main job (``accelerate launch examples/lock_vit.py --output_dir RUN`` or
``encoderlock lock``):

    python benchmarks/adaptive_attacks.py --run RUN --out benchmarks/results/adaptive/default --suite full

Rebuilds the attacker's data exactly as the main job split it (the share of each lock domain's training split that
the lock never used; the untouched test split), reads the victim's and random-init twin's clean fresh-probe
accuracies from the run's ``report.json``, and runs :func:`hf_encoderlock.probing.adaptive.run_adaptive_suite` on
``RUN/locked`` for each prohibited domain: the probe-only families, and with ``--suite full`` the fine-tuning
families too (patient full fine-tuning, re-initialisation of the blocks a lock may change then fine-tuning, and
fine-tuning after the chosen sanitiser), each against training from scratch and against the same attacker on
``RUN/victim``. Writes ``adaptive_report.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hf_encoderlock.experiment import LockExperimentArguments, _load_domains, split_for_lock
from hf_encoderlock.probing.adaptive import AdaptiveConfig, run_adaptive_suite


def attacker_domains(experiment: dict, variant: str) -> tuple[dict, LockExperimentArguments]:
    """``{domain: the attacker's DatasetDict}`` as the main job split them, and the job's arguments: a lock domain's
    train split is the share the lock never used; a domain the lock never saw (every target of a zero-shot lock) is
    the attacker's whole."""
    args = LockExperimentArguments(**experiment)
    domains = _load_domains(args)
    attacker = dict(domains)
    lock_domains = [*args.authorized_domains(), *([args.prohibited] if variant != "zero-shot" else [])]
    for name in lock_domains:
        display = args.spec(name).display_name
        _, attacker[display] = split_for_lock(domains[display], args.lock_share, args.max_lock_images, args.domain_seed)
    return attacker, args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="A finished main job's output folder.")
    parser.add_argument("--out", type=Path, required=True, help="Where adaptive_report.json / .md go.")
    parser.add_argument("--suite", choices=("probe", "full"), default="full")
    parser.add_argument("--finetune_fractions", type=float, nargs="+", default=[0.1])
    parser.add_argument("--finetune_epochs", type=int, default=50)
    parser.add_argument("--finetune_lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    parser.add_argument("--finetune_seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no_victim_finetune", action="store_true", help="Skip the victim's fine-tuning row.")
    parser.add_argument("--domains", nargs="+", help="Prohibited domains to attack (default: every one of the run).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--target", choices=("locked", "victim"), default="locked", help="Attack RUN/locked (default) or RUN/victim."
    )
    parser.add_argument(
        "--encoder",
        type=Path,
        help="Attack this encoder folder instead of RUN/TARGET, on the run's attacker data and against the run's "
        "victim and twin figures (e.g. an encoder pre-trained without the prohibited domain, as a reference).",
    )
    parser.add_argument("--sanitizers", nargs="*", help="Sanitisers to try (default: all; none: no sanitiser).")
    parser.add_argument("--transforms", nargs="*", help="Transforms to try (default: all; none: no transform).")
    parser.add_argument(
        "--learned_transforms", nargs="*", help="Learned transforms to try (default: all; none: no learned one)."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    report = json.loads((args.run / "report.json").read_text())
    attacker, experiment = attacker_domains(report["experiment"], report["lock"]["variant"])
    prohibited = [
        row
        for row in report["table"]
        if row["role"] == "prohibited" and (args.domains is None or row["domain"] in args.domains)
    ]
    authorized = [row["domain"] for row in report["table"] if row["role"] == "authorized"]
    baselines = {row["domain"]: {"victim": row["victim"], "random_twin": row["random_twin"]} for row in prohibited}
    chosen = {
        k: tuple(v)
        for k, v in (
            ("sanitizers", args.sanitizers),
            ("transforms", args.transforms),
            ("learned_transforms", args.learned_transforms),
        )
        if v is not None
    }
    # "none" (as the help says) or the flag alone: an empty family
    chosen = {k: () if v == ("none",) else v for k, v in chosen.items()}
    config = AdaptiveConfig(
        **chosen,
        combine=bool(chosen.get("sanitizers", True))
        and (bool(chosen.get("transforms", True)) or bool(chosen.get("learned_transforms", True))),
        suite=args.suite,
        seeds=tuple(experiment.probe_seeds),
        finetune_fractions=tuple(args.finetune_fractions),
        finetune_epochs=args.finetune_epochs,
        finetune_lrs=tuple(args.finetune_lrs),
        finetune_seeds=tuple(args.finetune_seeds),
    )
    adaptive = run_adaptive_suite(
        str(args.encoder or args.run / args.target),
        {row["domain"]: attacker[row["domain"]] for row in prohibited},
        config,
        authorized=attacker[authorized[0]]["train"],
        baselines=baselines,
        victim=None if args.no_victim_finetune or args.suite == "probe" else str(args.run / "victim"),
        output_dir=args.out,
    )
    print(adaptive.to_markdown())


if __name__ == "__main__":
    main()
