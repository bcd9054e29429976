"""``encoderlock probe``: the attacker's probe suite on an encoder, written as probe_report.{json,md,png}."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..data.domains import DomainError, default_cache_dir
from ..encoders import EncoderError
from ..probing.features import FeatureError
from ..probing.heads import HEAD_KINDS
from ..probing.suite import ProbeConfig, load_domains, run_probe_suite
from .measure_options import (
    add_column_arguments,
    add_image_processor_argument,
    domain_specs,
    encoder_or_victim,
    silence_progress,
)

USER_ERRORS = (DomainError, EncoderError, FeatureError)
PROBE_DEFAULTS = {spec.name: spec.default for spec in dataclasses.fields(ProbeConfig)}  # shown in the flags' help


def _probe_config(args: argparse.Namespace):
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


def run(args: argparse.Namespace) -> int:
    """``encoderlock probe``: run the probe suite and write probe_report.{json,md,png} into ``--out``."""
    silence_progress(args)
    config = _probe_config(args)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    domains = load_domains(
        domain_specs(args.domains, args), config, cache_dir
    )  # fail on a bad domain before loading any model
    encoder = encoder_or_victim("victim" if args.victim else args.encoder, args.image_processor)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``encoderlock probe``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--encoder", metavar="PATH_OR_HUB_ID", help="Saved encoder folder or Hub model id.")
    source.add_argument("--victim", action="store_true", help="Use the built-in default victim encoder.")
    parser.add_argument(
        "--domains",
        nargs="+",
        required=True,
        metavar="DOMAIN",
        help="Built-in domain names, dataset folders or Hub dataset ids.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="Output folder for the report.")
    parser.add_argument("--fractions", type=float, nargs="+", help="Training fractions (default 0.01 0.1 1).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds (default 0 1 2).")
    parser.add_argument("--heads", nargs="+", choices=HEAD_KINDS, help="Head kinds (default: all).")
    parser.add_argument("--poolings", nargs="+", help="Poolings (default: every pooling the encoder offers).")
    parser.add_argument("--no-random-twin", action="store_true", help="Skip the random-init twin baseline.")
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"Images per encoder pass during feature extraction (default {PROBE_DEFAULTS['batch_size']}).",
    )
    parser.add_argument(
        "--epochs", type=int, help=f"Maximum epochs per gradient-trained head (default {PROBE_DEFAULTS['epochs']})."
    )
    parser.add_argument("--threads", type=int, help="torch threads for feature extraction (default: torch's own).")
    parser.add_argument("--cache-dir", type=Path, help="Cache folder (default: $HF_ENCODERLOCK_CACHE or ~/.cache).")
    parser.add_argument("--no-cache", action="store_true", help="Do not read or write cached features.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_column_arguments(parser)
    add_image_processor_argument(parser)
