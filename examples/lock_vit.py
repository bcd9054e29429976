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
``EncoderLockConfig`` (which includes all of ``transformers.TrainingArguments``) is a flag.
"""

from __future__ import annotations

import sys

from hf_encoderlock.cli.lock import parse_lock_args
from hf_encoderlock.experiment import run_lock_experiment
from hf_encoderlock.probing.lock_report import lock_report_markdown


def main(argv: list[str] | None = None) -> None:
    """Parse like ``encoderlock lock`` (``--config FILE`` then flags), run the main job, print the report."""
    experiment, lock_config = parse_lock_args(sys.argv[1:] if argv is None else argv)
    report = run_lock_experiment(experiment, lock_config)
    if lock_config.process_index == 0:
        print(lock_report_markdown(report))
        print(f"outputs in {lock_config.output_dir}")


if __name__ == "__main__":
    main()
