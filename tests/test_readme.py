"""The documented code runs as written.

The README's quick start runs verbatim on the user's path: a tiny encoder saved as the folder it names and tiny
image folders where it reads them. The "Locking from Python" block of docs/USAGE.md runs verbatim with a tiny model
and tiny data standing in for the built-in victim and domains (the same block with the real ones is measured there).
"""

import re
from pathlib import Path

from datasets import DatasetDict

import hf_encoderlock
from hf_encoderlock.cli.lock import parse_lock_args
from hf_encoderlock.encoders import tiny_vit_encoder
from tests.helpers import toy_domain

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
USAGE = ROOT / "docs" / "USAGE.md"
MARKER = "<!-- tests/test_readme.py runs this block verbatim"


def marked_block(path: Path) -> str:
    """The first ```python block after the marker comment in ``path``."""
    text = path.read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r".*?```python\n(.*?)```", text, re.S)
    assert found, f"{path.name} lost its tested block"
    return found.group(1)


def test_readme_quick_start_is_short_and_on_the_first_screen():
    text = README.read_text(encoding="utf-8")
    block = marked_block(README)
    assert len([line for line in block.splitlines() if line.strip()]) <= 10  # lines of code
    # a reader sees how to lock their own model within one screen (about 60 lines)
    assert text.index(block) < len("\n".join(text.splitlines()[:60]))
    # CI (.ci/run) runs the README's install and test commands
    assert 'pip install torch==2.13.0 -e ".[dev]"' in text
    assert "python -m pytest -q tests" in text


def test_readme_quick_start_runs_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_vit_encoder(seed=1, image_size=16).save_pretrained(tmp_path / "my-encoder")
    for name, style, seed in (("authorized", "red", 0), ("prohibited", "green", 1)):
        domain = toy_domain(60, seed, style)
        for row, (image, label) in enumerate(zip(domain["image"], domain["label"])):
            folder = tmp_path / "images" / name / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{row}.png")
    exec(compile(marked_block(README), str(README), "exec"), {"__name__": "readme"})
    locked = tmp_path / "my-encoder-locked"
    assert (locked / "encoderlock_config.json").is_file() and (locked / "README.md").is_file()
    encoder = hf_encoderlock.LockedEncoder.from_pretrained(locked)
    assert encoder.authorization.authorized and encoder.authorization.prohibited


def test_readme_command_line_parses():
    """The README's `encoderlock lock` line names flags the main job has (running it is the main job's test)."""
    line = next(line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("encoderlock lock"))
    experiment, config = parse_lock_args(line.split()[2:])
    assert experiment.model == "my-encoder" and experiment.prohibited == "images/prohibited"
    assert config.output_dir == "out"


def test_usage_locking_from_python_block_runs_verbatim(tmp_path, monkeypatch, capsys):
    styles = {"mnist": ("red", 0), "mnist-m": ("green", 1)}

    def tiny_domain(name, *args, **kwargs):
        style, seed = styles[name]
        return DatasetDict(train=toy_domain(72, seed, style), test=toy_domain(30, seed + 10, style))

    monkeypatch.setattr(hf_encoderlock, "load_victim", lambda *a, **k: tiny_vit_encoder(seed=1, image_size=16))
    monkeypatch.setattr(hf_encoderlock, "load_domain", tiny_domain)
    monkeypatch.chdir(tmp_path)
    exec(compile(marked_block(USAGE), str(USAGE), "exec"), {"__name__": "usage"})
    assert (tmp_path / "locked" / "encoderlock_config.json").is_file()
    assert "Attacker's best" in capsys.readouterr().out


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = [
        f"{page.name}: {target}"
        for page in pages
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8"))
        if not target.startswith(("http://", "https://")) and not (page.parent / target).exists()
    ]
    assert len(pages) > 10 and not broken, broken
