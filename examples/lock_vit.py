"""Lock a vision encoder against a prohibited domain and report how strong the lock really is.

    accelerate launch examples/lock_vit.py                       # offline, CPU: built-in victim ViT,
                                                                 # authorized mnist, prohibited mnist-m
    accelerate launch examples/lock_vit.py --model google/vit-base-patch16-224-in21k \\
        --authorized user/authorized-ds --prohibited user/prohibited-ds --output_dir out/vit-b
    accelerate launch examples/lock_vit.py examples/configs/default.yaml   # all arguments from a file
    accelerate launch examples/lock_vit.py --variant unsupervised     # prohibited images only, labels never read
    accelerate launch examples/lock_vit.py --variant zero-shot        # no prohibited data: synthetic stand-ins;
                                                                 # every other domain is reported as a target

Without a file, the defaults come from ``examples/configs/default.yaml`` (the tuned lock: the information
objective, ~1% of the weights in the patch embedding and first block) and flags override them.

Writes OUTPUT_DIR/victim/ and OUTPUT_DIR/locked/ (encoder folders that ``AutoModel.from_pretrained`` loads),
OUTPUT_DIR/report.json, report.md and probe.png. Every field of ``LockExperimentArguments`` and
``EncoderLockConfig`` (which includes all of ``transformers.TrainingArguments``) is a flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from hf_encoderlock.experiment import LockExperimentArguments, run_lock_experiment
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.probing.lock_report import lock_report_markdown

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


def parse(argv: list[str]) -> tuple[LockExperimentArguments, EncoderLockConfig]:
    """A YAML/JSON file alone gives every argument; otherwise flags override ``configs/default.yaml``."""
    parser = HfArgumentParser((LockExperimentArguments, EncoderLockConfig))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if DEFAULT_CONFIG.is_file():
        parser.set_defaults(**yaml.safe_load(DEFAULT_CONFIG.read_text()))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> None:
    experiment, lock_config = parse(sys.argv[1:] if argv is None else argv)
    report = run_lock_experiment(experiment, lock_config)
    if lock_config.process_index == 0:
        print(lock_report_markdown(report))
        print(f"outputs in {lock_config.output_dir}")


if __name__ == "__main__":
    main()
