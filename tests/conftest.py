"""Shared test set-up: every test runs offline, on CPU, with few threads; the shared fixtures (tiny lock, fake Hub)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from huggingface_hub import constants  # noqa: E402

from hf_encoderlock.encoders import tiny_vit_encoder  # noqa: E402
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, MASK_FILE, EncoderLockTrainer  # noqa: E402
from tests.helpers import TINY_LOCK, build_audit_folders, lock_config, make_lock_config, toy_domain  # noqa: E402
from tests.hub_server import FakeHubServer  # noqa: E402

# OMP_NUM_THREADS, when set, wins: on a shared, loaded machine two spinning threads per op run ~10x slower than one.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory, monkeypatch):
    """Run every test in a temporary folder of its own, so that a relative path (a default ``output_dir``, a
    ``save_pretrained("locked")``) can never write into the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Point the package's cache at a per-session temporary folder."""
    cache = tmp_path_factory.getbasetemp() / "hf_encoderlock_cache"
    monkeypatch.setenv("HF_ENCODERLOCK_CACHE", str(cache))
    yield


# ------------------------------------------------------------------------------------------------- tiny lock


class ToyDomains(NamedTuple):
    authorized: Dataset
    prohibited: Dataset
    eval_authorized: Dataset
    eval_prohibited: Dataset


@pytest.fixture(scope="session")
def toy_domains() -> ToyDomains:
    """The tiny lock's data: 48 red (authorized) and 48 green (prohibited) images, and 15 + 15 to evaluate on."""
    return ToyDomains(
        toy_domain(48, 0, "red"), toy_domain(48, 1, "green"), toy_domain(15, 2, "red"), toy_domain(15, 3, "green")
    )


@pytest.fixture
def tiny_lock_config(tmp_path):
    """Factory: ``make(root=tmp_path, preset=TINY_LOCK, **overrides)`` is the ``EncoderLockConfig`` of a tiny lock
    writing to ``root / "run"`` (see ``tests.helpers`` for the presets)."""

    def make(root: Path | None = None, preset: dict[str, Any] = TINY_LOCK, **overrides: Any):
        return make_lock_config((tmp_path if root is None else root) / "run", preset, **overrides)

    return make


@pytest.fixture
def tiny_trainer(tiny_lock_config, toy_domains):
    """Factory: ``make(root=tmp_path, **overrides)`` returns ``(encoder, trainer)``: a fresh seed-0 tiny ViT and the
    tiny lock of it (``tiny_lock_config(root, **overrides)``), red authorized, green prohibited, with eval sets."""

    def make(root: Path | None = None, **overrides: Any):
        encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
        authorized, prohibited, eval_a, eval_p = toy_domains
        args = tiny_lock_config(root, **overrides)
        trainer = EncoderLockTrainer(
            encoder,
            args,
            authorized,
            prohibited,
            "red",
            "green",
            eval_dataset={"authorized": eval_a, "prohibited": eval_p},
        )
        return encoder, trainer

    return make


# -------------------------------------------------------------------------------------------------------- hub


@pytest.fixture
def locked_folder(tmp_path) -> Path:
    """A folder as ``EncoderLockTrainer.save_model`` writes it (tiny ViT, hand-written lock config)."""
    folder = tmp_path / "locked"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(folder)
    (folder / LOCK_CONFIG_FILE).write_text(json.dumps(lock_config()))
    (folder / MASK_FILE).write_bytes(b"not part of the release")
    return folder


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A Hub-compatible server on 127.0.0.1 reached through HF_ENDPOINT; offline mode lifted for this test only."""
    with FakeHubServer() as hub:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        yield hub
    assert hub.unhandled == [], f"the client called endpoints the fake hub does not serve: {hub.unhandled}"


# ------------------------------------------------------------------------------------------------------ audit


@pytest.fixture()
def audit_folders(tmp_path) -> tuple[Path, Path]:
    """``(orig, locked)`` folders: a saved tiny encoder and a hand-made lock of it (see ``build_audit_folders``)."""
    return build_audit_folders(tmp_path)


# ------------------------------------------------------------------------------------------------- a clean checkout

REPOSITORY = Path(__file__).resolve().parents[1]
_STATUS_BEFORE = pytest.StashKey[str | None]()


def _checkout_status() -> str | None:
    """``git status --porcelain`` of the checkout, or ``None`` outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STATUS_BEFORE] = _checkout_status()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when the tests changed the checkout: a test wrote where it should have used tmp_path."""
    before, after = session.config.stash.get(_STATUS_BEFORE, None), _checkout_status()
    if before is None or after is None or before == after:
        return
    changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
    session.config.get_terminal_writer().line(
        "the tests changed the checkout (git status --porcelain): " + "; ".join(changed[:10]), red=True
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
