"""Command line: ``encoderlock <command> ...``.

    encoderlock probe --encoder PATH_OR_HUB_ID --domains mnist digits --out DIR
    encoderlock probe --victim --domains mnist digits --out DIR --fractions 0.01 0.1 1 --seeds 0 1 2
    encoderlock attack --encoder OUT/locked --domains mnist mnist-m --authorized mnist --prohibited mnist-m --out DIR
    encoderlock audit OUT/locked --original OUT/victim --out DIR
    encoderlock push OUT/locked user/vit-locked --gated

Each command registers itself on the subparsers in :func:`build_parser` (``add_<command>_parser``) and sets a
``handler(args) -> int``; ``attack``, ``push`` and ``audit`` plug in the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

PROG = "encoderlock"


def _probe_config(args: argparse.Namespace):
    from .probes import ProbeConfig

    overrides = {
        "fractions": args.fractions,
        "seeds": args.seeds,
        "heads": args.heads,
        "poolings": args.poolings,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "num_threads": args.threads,
    }
    config = ProbeConfig(progress=not args.quiet)
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def run_probe_command(args: argparse.Namespace) -> int:
    """``encoderlock probe``: run the probe suite and write probe_report.{json,md,png} into ``--out``."""
    from .domains import default_cache_dir
    from .probes import load_domains, run_probe_suite

    config = _probe_config(args)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    domains = load_domains(args.domains, config, cache_dir)  # fail on a bad domain before loading any model
    if args.victim:
        from .victim import load_victim

        encoder = load_victim()
    else:
        from .encoders import load_encoder

        encoder = load_encoder(args.encoder)
    report = run_probe_suite(encoder, domains, config, random_twin=not args.no_random_twin, cache_dir=cache_dir)
    paths = report.save(args.out)
    print(_best_summary(report))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


def _best_summary(report) -> str:
    lines = [f"Attacker's best test accuracy (%), mean ± std over seeds: {report.encoder}"]
    for role in report.roles:
        for best in report.best_scores(role):
            lines.append(
                f"  {role:<11} {best.domain:<12} {100 * best.fraction:>5g}%  "
                f"{100 * best.mean:5.1f} ± {100 * best.std:4.1f}  ({best.usual_choice})"
            )
    return "\n".join(lines)


def add_probe_parser(subparsers) -> None:
    from .heads import HEAD_KINDS

    parser = subparsers.add_parser(
        "probe",
        help="Probe an encoder: fresh heads on frozen features, per domain and training fraction.",
        description="Train fresh linear / MLP / kNN heads on an encoder's frozen features (and on its random-init "
        "twin, the no-encoder baseline) and report test accuracy per domain, head and training fraction.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--encoder", metavar="PATH_OR_HUB_ID", help="Saved encoder folder or Hub model id.")
    source.add_argument("--victim", action="store_true", help="Use the built-in default victim encoder.")
    parser.add_argument("--domains", nargs="+", required=True, metavar="DOMAIN",
                        help="Built-in domain names, dataset folders or Hub dataset ids.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="Output folder for the report.")
    parser.add_argument("--fractions", type=float, nargs="+", help="Training fractions (default 0.01 0.1 1).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds (default 0 1 2).")
    parser.add_argument("--heads", nargs="+", choices=HEAD_KINDS, help="Head kinds (default: all).")
    parser.add_argument("--poolings", nargs="+", help="Poolings (default: every pooling the encoder offers).")
    parser.add_argument("--no-random-twin", action="store_true", help="Skip the random-init twin baseline.")
    parser.add_argument("--batch-size", type=int, help="Images per encoder pass during feature extraction.")
    parser.add_argument("--epochs", type=int, help="Maximum epochs per gradient-trained head.")
    parser.add_argument("--threads", type=int, help="torch threads for feature extraction.")
    parser.add_argument("--cache-dir", type=Path, help="Cache folder (default: $HF_ENCODERLOCK_CACHE or ~/.cache).")
    parser.add_argument("--no-cache", action="store_true", help="Do not read or write cached features.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(handler=run_probe_command)


def add_push_parser(subparsers) -> None:
    from .hub import add_push_parser as add_hub_push_parser

    add_hub_push_parser(subparsers)


def add_audit_parser(subparsers) -> None:
    from .audit import add_audit_parser as add_locked_audit_parser

    add_locked_audit_parser(subparsers)


def add_attack_parser(subparsers) -> None:
    from .attacks import add_attack_parser as add_finetune_attack_parser

    add_finetune_attack_parser(subparsers)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_probe_parser,
    add_attack_parser,
    add_push_parser,
    add_audit_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="EncoderLock: lock pre-trained encoders against probing.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .domains import DomainError
    from .encoders import EncoderError
    from .features import FeatureError

    return DomainError, EncoderError, FeatureError, ValueError, FileNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``encoderlock`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except _user_errors() as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
