"""``encoderlock env``: versions, devices and cache paths, to paste into a bug report."""

from __future__ import annotations

import argparse
import os
import platform

import torch

from .._utils import package_versions
from ..data.domains import default_cache_dir

USER_ERRORS = ()


def environment() -> dict[str, str]:
    """What a bug report needs: package versions, the platform, accelerators, caches and offline switches."""
    info = {f"{name} version": version for name, version in package_versions().items()}
    info["platform"] = platform.platform()
    info["CPU threads (torch)"] = str(torch.get_num_threads())
    info["CUDA available"] = str(torch.cuda.is_available())
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["CUDA devices"] = ", ".join(names)
    info["MPS available"] = str(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
    info["hf_encoderlock cache"] = str(default_cache_dir())
    info["Hugging Face cache"] = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        info[switch] = os.environ.get(switch, "(unset)")
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``encoderlock env`` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    """Print one ``- key: value`` line per fact."""
    for key, value in environment().items():
        print(f"- {key}: {value}")
    return 0
