"""The shipped ``encoderlock lock --help``: true for these sources, printed without torch, else rendered again."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_encoderlock.cli import lock as cli_lock
from hf_encoderlock.cli import lock_help
from hf_encoderlock.cli.lock import lock_help_sources, lock_help_text, render_lock_help, write_shipped_help
from hf_encoderlock.cli.lock_help import (
    FLAVOURS,
    WRITE_COMMAND,
    cached_help,
    known_help,
    read_help_record,
    shipped_help,
)
from hf_encoderlock.lock.trainer import TRANSFORMERS_CHECKED

STALE = f"the shipped help is stale: run `{WRITE_COMMAND}` and commit hf_encoderlock/cli/lock_help.json"


def test_the_shipped_help_is_what_the_parser_renders_now(tmp_path):
    shipped = read_help_record()
    assert shipped is not None, STALE
    fresh = json.loads(write_shipped_help(tmp_path / "lock_help.json").read_text(encoding="utf-8"))
    for flavour in FLAVOURS:
        assert shipped["help"][flavour] == fresh["help"][flavour], f"--help ({flavour}): {STALE}"
    assert shipped["environment"] == fresh["environment"], STALE
    assert shipped["sources"] == fresh["sources"], STALE  # the same files, with the same contents
    assert shipped == fresh, STALE


def test_the_help_sources_include_the_modules_defaults_and_choices_come_from():
    sources = set(lock_help_sources())
    for name in ("cli/lock.py", "experiment.py", "lock/config.py", "lock/knobs.py", "lock/objectives/information.py"):
        assert name in sources  # the parser, the argument classes and a knob group
    assert "data/streamed.py" in sources  # lock_cache_bytes' default is a constant imported from it
    assert "lock/selection.py" in sources  # score_function's choices


@pytest.mark.parametrize("flavour, word", [("short", "--help"), ("all", "--help-all")])
def test_the_first_help_with_an_empty_cache_is_fast_and_imports_no_torch(tmp_path, flavour, word):
    cache = tmp_path / "cache"
    code = "\n".join(
        [
            "import sys",
            "from hf_encoderlock.cli.main import main",
            "try:",
            f"    main(['lock', '{word}'])",
            "except SystemExit as exit:",
            "    print(exit.code, 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)",
        ]
    )
    env = {**os.environ, "HF_ENCODERLOCK_CACHE": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr.split() == ["0", "False", "False"], STALE  # exit 0; neither torch nor transformers imported
    assert done.stdout == shipped_help(flavour) and "--num_rounds" in done.stdout
    assert not cache.exists()  # nothing rendered, nothing cached
    assert took < 2, f"{took:.1f} s"

    started = time.perf_counter()
    script = subprocess.run(
        [sys.executable, "-m", "hf_encoderlock.cli.main", "lock", word], capture_output=True, text=True, env=env
    )
    took = time.perf_counter() - started
    assert script.returncode == 0 and script.stdout == done.stdout and took < 2, f"{took:.1f} s"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda record: record["sources"].update({"lock/config.py": "0" * 64}),  # an edited source
        lambda record: record["sources"].update({"gone.py": "0" * 64}),  # a source no longer there
        lambda record: record["environment"].update(transformers="0.0"),  # another transformers
        lambda record: record["environment"].update(python="2.7"),  # another argparse
    ],
)
def test_a_help_rendered_from_other_sources_or_versions_is_not_printed(tmp_path, monkeypatch, tamper):
    record = read_help_record()
    tamper(record)
    (tmp_path / "lock_help.json").write_text(json.dumps(record), encoding="utf-8")
    monkeypatch.setattr(lock_help, "SHIPPED_HELP", tmp_path / "lock_help.json")
    monkeypatch.setenv("HF_ENCODERLOCK_CACHE", str(tmp_path / "cache"))
    assert shipped_help("short") is None and known_help("short") is None

    renders = []
    monkeypatch.setattr(cli_lock, "render_lock_help", lambda name: renders.append(name) or render_lock_help(name))
    text = lock_help_text("short")
    assert renders == ["short"] and text == render_lock_help("short")  # rendered afresh, from the parser
    assert cached_help("short") == text and lock_help_text("short") == text and renders == ["short"]  # then cached


def test_a_missing_or_unreadable_shipped_help_is_rendered(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENCODERLOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lock_help, "SHIPPED_HELP", tmp_path / "absent.json")
    assert known_help("all") is None
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setattr(lock_help, "SHIPPED_HELP", tmp_path / "broken.json")
    assert known_help("all") is None
    assert lock_help_text("all") == render_lock_help("all")


def test_the_dev_pin_is_the_transformers_the_help_and_trainer_hooks_were_checked_with():
    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text(encoding="utf-8")
    pinned = re.findall(r'"transformers==([0-9.]+)"', setup)
    assert pinned == [TRANSFORMERS_CHECKED] == [read_help_record()["environment"]["transformers"]], STALE
