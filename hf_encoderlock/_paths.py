"""Where the package keeps its files on the user's machine.

Standard library only, unlike ``_files`` and ``_utils`` (which import ``transformers.utils``): the command line reads
its rendered help from the cache through this module before anything imports transformers or torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$HF_ENCODERLOCK_CACHE`` if set, else ``~/.cache/hf_encoderlock``."""
    env = os.environ.get("HF_ENCODERLOCK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_encoderlock"
