"""``encoderlock attack``: fine-tuning attacks (full, last-k blocks, LoRA) against training from scratch."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._files import ATTACK_REPORT_STEM
from ..data.domains import DomainError
from ..encoders import EncoderError
from ..probing.attacks import ATTACKS, AttackConfig, AttackError, attack_report_markdown, run_attack_suite
from ..victim import load_victim

USER_ERRORS = (DomainError, EncoderError, AttackError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``encoderlock attack``."""
    parser.add_argument(
        "--encoder", required=True, metavar="PATH_OR_HUB_ID", help="Encoder folder, Hub id or 'victim'."
    )
    parser.add_argument("--domains", nargs="+", required=True, metavar="DOMAIN", help="Domains to attack on.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="Output folder for the report.")
    parser.add_argument("--authorized", nargs="*", default=[], metavar="DOMAIN", help="Domains recorded as authorized.")
    parser.add_argument("--prohibited", nargs="*", default=[], metavar="DOMAIN", help="Domains recorded as prohibited.")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, help="Attacks (default: full last_k lora).")
    parser.add_argument("--fractions", type=float, nargs="+", help="Training fractions (default 0.01 0.1 1).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds (default 0).")
    parser.add_argument("--epochs", type=int, help="Maximum epochs per attack run.")
    parser.add_argument("--max-train", type=int, help="Cap on each domain's training split (stratified).")
    parser.add_argument("--max-test", type=int, help="Cap on each domain's test split.")
    parser.add_argument("--no-scratch", action="store_true", help="Skip training the random-init twin from scratch.")
    parser.add_argument("--threads", type=int, help="torch threads.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")


def run(args: argparse.Namespace) -> int:
    """Handler of ``encoderlock attack``: run :func:`run_attack_suite` and print where the report went."""
    overrides = {
        "attacks": args.attacks,
        "fractions": args.fractions,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "max_train_examples": args.max_train,
        "max_test_examples": args.max_test,
        "num_threads": args.threads,
    }
    config = AttackConfig(progress=not args.quiet, **{k: v for k, v in overrides.items() if v is not None})
    encoder = args.encoder
    if encoder == "victim":
        encoder = load_victim()
    report = run_attack_suite(
        encoder,
        args.domains,
        config,
        random_twin=not args.no_scratch,
        authorized=args.authorized,
        prohibited=args.prohibited,
        output_dir=args.out,
    )
    print(attack_report_markdown(report))
    print(f"wrote {args.out}/{ATTACK_REPORT_STEM}.json, .md and .png")
    return 0
