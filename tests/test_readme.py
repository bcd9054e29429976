"""The README's code runs as written: the "Locking from Python" block, verbatim, with a tiny model and tiny data
standing in for the built-in victim and domains (the same block with the real ones is measured in the README)."""

import re
from pathlib import Path

from datasets import DatasetDict

import hf_encoderlock
from hf_encoderlock.encoders import tiny_vit_encoder
from tests.helpers import toy_domain

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tests/test_readme.py runs this block verbatim"


def readme_block() -> str:
    """The first ```python block after the marker comment."""
    text = README.read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r".*?```python\n(.*?)```", text, re.S)
    assert found, "the README lost its tested block"
    return found.group(1)


def test_locking_from_python_block_runs_verbatim(tmp_path, monkeypatch, capsys):
    styles = {"mnist": ("red", 0), "mnist-m": ("green", 1)}

    def tiny_domain(name, *args, **kwargs):
        style, seed = styles[name]
        return DatasetDict(train=toy_domain(72, seed, style), test=toy_domain(30, seed + 10, style))

    monkeypatch.setattr(hf_encoderlock, "load_victim", lambda *a, **k: tiny_vit_encoder(seed=1, image_size=16))
    monkeypatch.setattr(hf_encoderlock, "load_domain", tiny_domain)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block(), str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "locked" / "encoderlock_config.json").is_file()
    assert "Attacker's best" in capsys.readouterr().out
