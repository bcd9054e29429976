"""``encoderlock attack``: the attacker's suites against an encoder.

- ``--suite finetune`` (default): fine-tuning attacks (full, last-k blocks, LoRA, re-initialisation) against training
  from scratch, at several fractions of each domain;
- ``--suite probe``: the adaptive attacker's probe-only families (weight sanitisation, input transformations, both)
  and the worst case over them;
- ``--suite full``: the probe-only families plus the adaptive fine-tuning families (patient full fine-tuning,
  re-initialisation then fine-tuning, fine-tuning after the chosen sanitiser).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .._files import ADAPTIVE_REPORT_STEM, ATTACK_REPORT_STEM
from ..data.domains import DomainError, DomainSpec, load_domain
from ..encoders import EncoderError
from ..probing.adaptive import AdaptiveConfig, AdaptiveError, adaptive_report_markdown, run_adaptive_suite
from ..probing.attacks import ATTACKS, AttackConfig, AttackError, attack_report_markdown, run_attack_suite
from ..probing.sanitize import SanitizeError
from ..probing.transforms import TransformError
from .measure_options import (
    add_column_arguments,
    add_image_processor_argument,
    domain_specs,
    encoder_or_victim,
    silence_progress,
)

USER_ERRORS = (DomainError, EncoderError, AttackError, AdaptiveError, SanitizeError, TransformError)
SUITES = ("finetune", "probe", "full")
# shown in the flags' help
ATTACK_DEFAULTS = {spec.name: spec.default for spec in dataclasses.fields(AttackConfig)}
ADAPTIVE_DEFAULTS = {spec.name: spec.default for spec in dataclasses.fields(AdaptiveConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``encoderlock attack``."""
    parser.add_argument(
        "--encoder", required=True, metavar="PATH_OR_HUB_ID", help="Encoder folder, Hub id or 'victim'."
    )
    parser.add_argument("--domains", nargs="+", required=True, metavar="DOMAIN", help="Domains to attack on.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="Output folder for the report.")
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="finetune",
        help="finetune: fine-tuning attacks against scratch (default); probe: the adaptive attacker's probe-only "
        "families and their worst case; full: probe plus the adaptive fine-tuning families.",
    )
    parser.add_argument(
        "--authorized",
        nargs="*",
        default=[],
        metavar="DOMAIN",
        help="Domains recorded as authorized; with --suite probe/full the first one's training split gives the "
        "attacker's authorized sample (its channel statistics).",
    )
    parser.add_argument("--prohibited", nargs="*", default=[], metavar="DOMAIN", help="Domains recorded as prohibited.")
    parser.add_argument(
        "--victim",
        metavar="PATH_OR_HUB_ID",
        help="--suite probe/full: the unlocked encoder ('victim' for the built-in one), for advantage removed.",
    )
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, help="Attacks (default: full last_k lora).")
    parser.add_argument("--fractions", type=float, nargs="+", help="Training fractions (default 0.01 0.1 1).")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="Seeds (default 0; probe seeds 0 1 2 for the adaptive suite)."
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"Maximum epochs per attack run (default {ATTACK_DEFAULTS['epochs']}; "
        f"--suite probe/full: {ADAPTIVE_DEFAULTS['finetune_epochs']}).",
    )
    parser.add_argument(
        "--max-train", type=int, help="Cap on each domain's training split (stratified; default: none)."
    )
    parser.add_argument("--max-test", type=int, help="Cap on each domain's test split (default: none).")
    parser.add_argument("--no-scratch", action="store_true", help="Skip training the random-init twin from scratch.")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own).")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_column_arguments(parser)
    add_image_processor_argument(parser)


def _run_adaptive(args: argparse.Namespace) -> int:
    overrides = {
        "seeds": args.seeds,
        "finetune_fractions": args.fractions,
        "finetune_epochs": args.epochs,
        "num_threads": args.threads,
    }
    config = AdaptiveConfig(
        suite=args.suite, progress=not args.quiet, **{k: v for k, v in overrides.items() if v is not None}
    )
    reference = None
    if args.authorized:
        reference = load_domain(domain_specs(args.authorized[:1], args)[0], seed=config.domain_seed)["train"]
    report = run_adaptive_suite(
        encoder_or_victim(args.encoder, args.image_processor),
        domain_specs(args.domains, args),
        config,
        authorized=reference,
        victim=encoder_or_victim(args.victim, args.image_processor),
        output_dir=args.out,
    )
    print(adaptive_report_markdown(report))
    print(f"wrote {args.out}/{ADAPTIVE_REPORT_STEM}.json and .md")
    return 0


def _roles(names: list[str], domains: list[str], flag: str) -> list[str]:
    """``--authorized`` / ``--prohibited`` as the names the report gives its domains (a folder's base name, a Hub
    id): a role given as the same path as in ``--domains`` must find its domain, and one that is in no ``--domains``
    is an error rather than a silently empty role."""
    shown = {DomainSpec(domain).display_name for domain in domains}
    roles = []
    for name in names:
        display = DomainSpec(name).display_name
        if display not in shown:
            raise DomainError(f"{flag} {name!r} is not one of --domains ({', '.join(sorted(shown))})")
        roles.append(display)
    return roles


def run(args: argparse.Namespace) -> int:
    """Handler of ``encoderlock attack``: run the chosen suite and print where the report went."""
    silence_progress(args)
    if args.suite != "finetune":
        return _run_adaptive(args)
    authorized = _roles(args.authorized, args.domains, "--authorized")
    prohibited = _roles(args.prohibited, args.domains, "--prohibited")
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
    report = run_attack_suite(
        encoder_or_victim(args.encoder, args.image_processor),
        domain_specs(args.domains, args),
        config,
        random_twin=not args.no_scratch,
        authorized=authorized,
        prohibited=prohibited,
        output_dir=args.out,
    )
    print(attack_report_markdown(report))
    print(f"wrote {args.out}/{ATTACK_REPORT_STEM}.json, .md and .png")
    return 0
