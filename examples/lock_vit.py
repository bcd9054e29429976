"""Lock a vision encoder against a prohibited domain and report how strong the lock really is.

    accelerate launch --num_cpu_threads_per_process 2 examples/lock_vit.py   # offline, CPU (both cores of a
                                                                 # 2-core machine): built-in victim ViT,
                                                                 # authorized mnist, prohibited mnist-m
    accelerate launch examples/lock_vit.py --model google/vit-base-patch16-224-in21k \\
        --authorized user/authorized-ds --prohibited user/prohibited-ds --output_dir out/vit-b
    accelerate launch examples/lock_vit.py --config my.yaml --num_rounds 5   # a file, then flags over it
    accelerate launch examples/lock_vit.py --variant unsupervised     # prohibited images only, labels never read
    accelerate launch examples/lock_vit.py --variant zero-shot        # no prohibited data: synthetic stand-ins;
                                                                 # every other domain is reported as a target

The defaults are ``EncoderLockConfig()``'s: the tuned lock (the information objective, ~1% of the weights in the
patch embedding and first two blocks); ``examples/configs/default.yaml`` spells the same values out. The same job is
``encoderlock lock`` for a pip install.

Writes OUTPUT_DIR/victim/ and OUTPUT_DIR/locked/ (encoder folders that ``AutoModel.from_pretrained`` loads),
OUTPUT_DIR/report.json, report.md and probe.png. Every field of ``LockExperimentArguments`` and
``EncoderLockConfig`` (which includes all of ``transformers.TrainingArguments``) is a flag. Bad input stops the job
before any long work with one line naming the problem (exit status 2); ``accelerate launch --quiet`` also leaves out
accelerate's own traceback after it.
"""

from __future__ import annotations

import argparse
import sys

from hf_encoderlock.cli import lock as lock_command
from hf_encoderlock.cli.main import main as encoderlock_main


def main(argv: list[str] | None = None) -> None:
    """Parse like ``encoderlock lock`` (``--config FILE`` then flags), run the main job, print the report. Errors
    propagate (for callers and tests); run as a script, bad input gets ``encoderlock lock``'s one-line error."""
    lock_command.run(argparse.Namespace(words=sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    # the CLI's handling: a user error (a taken output folder, a bad flag value) is one line and exit status 2, an
    # unexpected one a line too; --debug shows the traceback
    sys.exit(encoderlock_main(["lock", *sys.argv[1:]]))
