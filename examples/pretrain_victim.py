"""Pre-train the default victim encoder and write it into the package (seeded, offline, CPU).

    python examples/pretrain_victim.py                      # writes hf_encoderlock/assets/victim
    python examples/pretrain_victim.py --output_dir DIR --epochs 4

The recipe (architecture, domains, optimiser, epochs, seeds) lives in ``hf_encoderlock.victim.VictimConfig``;
every field is a command-line flag here.
"""

from __future__ import annotations

import torch
from transformers import HfArgumentParser

from hf_encoderlock.victim import VICTIM_ASSET_DIR, VictimConfig, pretrain_victim


def main() -> None:
    parser = HfArgumentParser(VictimConfig)
    parser.add_argument("--output_dir", default=str(VICTIM_ASSET_DIR), help="Where the victim folder goes.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    config, extra = parser.parse_args_into_dataclasses()
    if extra.threads:
        torch.set_num_threads(extra.threads)
    pretrain_victim(config, output_dir=extra.output_dir)
    print(f"victim written to {extra.output_dir}")


if __name__ == "__main__":
    main()
