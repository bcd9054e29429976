"""Command line: ``encoderlock <command> ...``.

    encoderlock probe --encoder PATH_OR_HUB_ID --domains mnist digits --out DIR
    encoderlock probe --victim --domains mnist digits --out DIR --fractions 0.01 0.1 1 --seeds 0 1 2
    encoderlock attack --encoder OUT/locked --domains mnist mnist-m --authorized mnist --prohibited mnist-m --out DIR
    encoderlock attack --suite probe --encoder OUT/locked --victim OUT/victim --domains mnist-m --authorized mnist \
        --out DIR
    encoderlock audit OUT/locked --original OUT/victim --out DIR
    encoderlock push OUT/locked user/vit-locked --gated

One module per command (``hf_encoderlock.cli.<command>``) with ``add_arguments(parser)``, ``run(args) -> int`` and
``USER_ERRORS``. Only the chosen command's module is imported, so ``encoderlock --help`` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from .lock_help import help_request, known_help

PROG = "encoderlock"
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
DEBUG_FLAG = "--debug"  # anywhere among the words: show tracebacks instead of one-line errors

#: command -> (module under hf_encoderlock.cli, one-line help, description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "lock": (
        "lock",
        "Lock an encoder and report how strong the lock is (the main job; `encoderlock lock --help`).",
        "Victim -> probes -> lock -> probes -> report, with the same arguments as examples/lock_vit.py.",
    ),
    "probe": (
        "probe",
        "Probe an encoder: fresh heads on frozen features, per domain and training fraction.",
        "Train fresh linear / MLP / kNN heads on an encoder's frozen features (and on its random-init twin, the "
        "no-encoder baseline) and report test accuracy per domain, head and training fraction.",
    ),
    "attack": (
        "attack",
        "Attack an encoder: fine-tuning against scratch, or the adaptive attacker who knows the method (--suite).",
        "--suite finetune (default): fine-tune the encoder with a fresh head on each domain (full, last-k blocks, "
        "LoRA, re-initialisation), choosing learning rate and epoch on a validation split of the training images, "
        "and compare with the same architecture trained from scratch; writes attack_report.json, .md and .png. "
        "--suite probe: weight sanitisation, input transformations (fixed ones, and a colour map and a patch map "
        "learned through the encoder) and both, then fresh probes, each chosen on validation, and the worst case "
        "over them; --suite full adds patient and re-initialised fine-tuning; "
        "both write adaptive_report.json and .md.",
    ),
    "push": (
        "push",
        "Push a locked encoder folder (weights, processor, lock config, model card) to the Hugging Face Hub.",
        "Regenerate the model card of a locked encoder folder and upload the folder to a Hub repository.",
    ),
    "sign": (
        "sign",
        "Sign every published file of a locked encoder folder with an elliptic-curve key (model.sig).",
        "Sign the weights, configs, lock config and model card of a locked folder with OpenSSF model-signing "
        "(needs pip install 'hf_encoderlock[signing]'); load_locked(..., public_key=...) then refuses a changed or "
        "removed signed file, and an added code, config or weights file.",
    ),
    "env": ("env", "Print versions, devices and cache paths (for bug reports).", "Print versions, devices and caches."),
    "audit": (
        "audit",
        "Audit a locked encoder folder: changed weights, mask, config, card hashes, probes.",
        "Report which weights changed against the original, check them against the lock's mask and config, verify "
        "the weight hashes in the model card and rerun the probe suite. Exit status 1 when a check fails.",
    ),
}


def command_module(command: str) -> ModuleType:
    """The module implementing ``command`` (imported on demand: commands pull in torch and datasets)."""
    return importlib.import_module(f"{__package__}.{COMMANDS[command][0]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``encoderlock`` parser; every command's arguments, or only those of ``only`` (the others list their help)."""
    parser = argparse.ArgumentParser(prog=PROG, description="EncoderLock: lock pre-trained encoders against probing.")
    parser.add_argument("--version", action="version", version=f"{PROG} (hf_encoderlock) {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text, description) in COMMANDS.items():
        command_parser = subparsers.add_parser(name, help=help_text, description=description)
        if only is None or only == name:
            command_module(name).add_arguments(command_parser)
            accept_both_flag_styles(command_parser)
    return parser


def accept_both_flag_styles(parser: argparse.ArgumentParser) -> None:
    """Every ``--kebab-case`` flag also answers to ``--snake_case``, as the main job's flags do (HfArgumentParser
    accepts both), so one style works across all sub-commands."""
    for action in list(parser._actions):
        for flag in list(action.option_strings):
            if flag.startswith("--") and "-" in flag[2:]:
                alias = "--" + flag[2:].replace("-", "_")
                if alias not in parser._option_string_actions:
                    action.option_strings.append(alias)
                    parser._option_string_actions[alias] = action


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``encoderlock`` console script; returns the exit status.

    Exit status: 0 done, 1 checks failed (``audit``), 2 a user error (bad input, missing file, missing extra: one line
    naming it), 3 an unexpected error (one line; ``--debug`` anywhere among the words shows the traceback), 130
    interrupted (Ctrl-C).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [word for word in argv if word != DEBUG_FLAG]
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen == "lock" and argv[0] == chosen:
        # the main job's help, shipped or rendered before for these sources: print it without importing torch
        flavour = help_request(argv[1:])
        text = None if flavour is None else known_help(flavour)
        if text is not None:
            print(text, end="")
            raise SystemExit(0)  # as argparse's --help does
    if chosen in COMMANDS and getattr(command_module(chosen), "PASSTHROUGH", False) and argv[0] == chosen:
        # the command parses its own words (the main job's HfArgumentParser), --help included
        args = argparse.Namespace(command=chosen, words=argv[1:])
    else:
        args = build_parser(only=chosen if chosen in COMMANDS else "").parse_args(argv)
    module = command_module(args.command)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C is the user's choice: one line, no traceback (--debug shows it)
        if debug:
            raise
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*module.USER_ERRORS, ValueError, OSError, ImportError) as error:
        if debug:
            raise
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # a bug: say so in one line, keep the traceback for --debug
        if debug:
            raise
        print(
            f"{PROG} {args.command}: unexpected {type(error).__name__}: {_one_line(error)} "
            f"(run again with {DEBUG_FLAG} for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
