"""The public API: every exported name resolves, and importing the package stays light."""

import re
import subprocess
import sys
from pathlib import Path

import hf_encoderlock


def test_every_exported_name_resolves():
    for name in hf_encoderlock.__all__:
        assert getattr(hf_encoderlock, name) is not None, name


def test_import_does_not_pull_in_the_trainer():
    code = "import sys, hf_encoderlock; print('transformers.trainer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_IMPORT = re.compile(r"from hf_encoderlock import (?:\(([\w\s,]+)\)|([\w ,]+))")


def top_level_imports(text: str) -> set[str]:
    """Names a text imports with ``from hf_encoderlock import ...`` (one line or a parenthesised block)."""
    blocks = ["".join(groups) for groups in TOP_LEVEL_IMPORT.findall(text)]
    return {name.strip() for block in blocks for name in block.split(",") if name.strip()}


def test_the_top_level_holds_every_name_the_docs_and_examples_import():
    """The top level keeps the user's names only; every ``from hf_encoderlock import`` in the README, the docs, the
    examples and the benchmarks must still work after a name moved to its module."""
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
    files += (ROOT / "benchmarks").glob("*.py")
    used = {name: path.name for path in files for name in top_level_imports(path.read_text(encoding="utf-8"))}
    assert used, "no top-level import found: the pattern no longer matches the docs"
    missing = {name: where for name, where in used.items() if name not in hf_encoderlock.__all__}
    assert missing == {}


def test_top_level_import_finder_reads_blocks():
    text = "from hf_encoderlock import (\n    EncoderLockConfig,\n    load_domain,\n)\n"
    text += "from hf_encoderlock import X, Y\n\nreport = X()\n"
    assert top_level_imports(text) == {"EncoderLockConfig", "load_domain", "X", "Y"}
