"""``encoderlock audit``: check a locked encoder folder against its original, mask, config and card."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .._files import AUDIT_JSON, AUDIT_MD, MASK_FILE
from ..audit import AuditError, audit_locked
from ..data.domains import DomainError
from ..encoders import EncoderError
from ..probing.suite import ProbeConfig
from .measure_options import add_column_arguments, domain_specs, silence_progress

USER_ERRORS = (AuditError, DomainError, EncoderError)


PROBE_EPOCHS = ProbeConfig.__dataclass_fields__["epochs"].default  # shown in the flag's help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``encoderlock audit``."""
    parser.add_argument("locked", help="A locked encoder folder.")
    parser.add_argument("--original", help="The encoder before locking: a folder, 'victim' or a Hub id.")
    parser.add_argument(
        "--mask", type=Path, help=f"The lock's mask (default: {MASK_FILE} in LOCKED when present; the owner keeps it)."
    )
    parser.add_argument(
        "--domains", nargs="+", metavar="DOMAIN", help="Domains to probe (default: the lock config's built-in domains)."
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="Write audit.json, audit.md (and the probe report).")
    parser.add_argument("--no-probes", action="store_true", help="Check files only; do not rerun the probe suite.")
    parser.add_argument("--fractions", type=float, nargs="+", help="Probe training fractions (default 0.01 0.1 1).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Probe seeds (default 0 1 2).")
    parser.add_argument("--heads", nargs="+", help="Probe head kinds (default: all).")
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"Maximum epochs per gradient-trained head (default {PROBE_EPOCHS}).",
    )
    parser.add_argument("--cache-dir", type=Path, help="Cache folder for built-in domains and features.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_column_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Handler of ``encoderlock audit``: 0 when every check passes, 1 when one fails or one could not run (no
    ``--original``: the result is INCOMPLETE); an audit that cannot run as
    asked (missing original, unreadable mask, another architecture) raises a one-line user error (exit 2)."""
    silence_progress(args)

    overrides = {"fractions": args.fractions, "seeds": args.seeds, "heads": args.heads, "epochs": args.epochs}
    config = dataclasses.replace(
        ProbeConfig(progress=not args.quiet), **{k: v for k, v in overrides.items() if v is not None}
    )
    report = audit_locked(
        args.locked,
        original=args.original,
        domains=domain_specs(args.domains, args),
        probe_config=config,
        probes=not args.no_probes,
        cache_dir=args.cache_dir,
        output_dir=args.out,
        mask=args.mask,
    )
    print(report.to_markdown())
    if args.out is not None:
        print(f"wrote {args.out / AUDIT_JSON} and {args.out / AUDIT_MD}")
    return 0 if report.ok else 1
