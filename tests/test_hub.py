"""Model card, authorization metadata, push and verified pull (through a local Hub-compatible HTTP server)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import GatedRepoError
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from hf_encoderlock.cli.main import main as cli_main
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub.card import (
    CARD_FILE,
    CITATION,
    METADATA_KEY,
    TEMPLATE_PATH,
    Authorization,
    EncoderLockCardData,
    LockVerificationError,
    sha256_file,
    write_model_card,
)
from hf_encoderlock.hub.push import load_locked, push_locked_to_hub
from hf_encoderlock.lock.config import EncoderLockConfig
from hf_encoderlock.lock.trainer import LOCK_CONFIG_FILE, MASK_FILE, EncoderLockTrainer

from .helpers import toy_domain
from .hub_server import FakeHubServer

TOKEN = "hf_test_token"
OFFLINE_AT_IMPORT = (constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_ENDPOINT"))
MASK = {"count": 20, "fraction": 0.001, "fraction_of_candidates": 0.0012, "num_parameters": 20000,
        "per_layer": {"layers.0.mlp.fc1.weight": 20}}  # fmt: skip


def _lock_config() -> dict:
    return {
        "format": "encoderlock/v1",
        "variant": "supervised",
        "objective": "paper",
        "authorized": [{"name": "/data/somewhere/red", "config": None}],
        "prohibited": ["green"],
        "hyperparameters": {"alpha": 1000.0, "num_rounds": 2, "weights_per_round": 10},
        "mask": MASK,
        "rounds_completed": 2,
        "best_round": 2,
        "seed": 7,
        "versions": {"hf_encoderlock": "0.1.0.dev0", "transformers": "5.24.0"},
    }


def _report() -> dict:
    def score(domain, head, pooling, mean, validation):
        return {"role": "encoder", "domain": domain, "head": head, "pooling": pooling, "fraction": 1.0,
                "mean": mean, "validation_accuracy": [validation], "test_accuracy": [mean]}  # fmt: skip

    return {
        "authorized": ["red"],
        "prohibited": ["green"],
        "fraction": 1.0,
        "table": [
            {
                "domain": "red",
                "role": "authorized",
                "random_twin": 0.4,
                "victim": 0.95,
                "locked": 0.94,
                "lock_own_head": 0.97,
                "advantage_kept": 0.98,
                "attacker_choice_locked": "mlp/cls",
            },
            {
                "domain": "green",
                "role": "prohibited",
                "random_twin": 0.35,
                "victim": 0.9,
                "locked": 0.36,
                "lock_own_head": 0.1,
                "advantage_removed": float("nan"),
                "attacker_choice_locked": "linear/mean",
            },
        ],  # fmt: skip
        "verdict": {"green": "lock holds: 98% of the victim's advantage removed"},
        "lock": {"mask": MASK, "seed": 7},
        "experiment": {"model": "google/vit-base-patch16-224"},
        "probe_after": {
            "scores": [
                score("red", "linear", "cls", 0.93, 0.9),
                score("red", "linear", "mean", 0.5, 0.4),  # worse on validation: not the attacker's choice
                score("red", "mlp", "cls", 0.94, 0.95),
                score("green", "linear", "mean", 0.36, 0.4),
                score("green", "knn", "cls", 0.34, 0.3),
            ]
        },
    }


@pytest.fixture
def locked_folder(tmp_path) -> Path:
    """A folder as ``EncoderLockTrainer.save_model`` writes it (tiny ViT, hand-written lock config)."""
    folder = tmp_path / "locked"
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(folder)
    (folder / LOCK_CONFIG_FILE).write_text(json.dumps(_lock_config()))
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


def _front_matter(path: Path) -> dict:
    return ModelCard.load(path).data.to_dict()


# --------------------------------------------------------------------------------------------------- card
def test_the_rendered_template_is_the_top_level_file():
    """One template: the package renders the repository's model_card_template.md itself (shipped through a link)."""
    top_level = Path(__file__).resolve().parents[1] / "model_card_template.md"
    assert TEMPLATE_PATH.resolve() == top_level.resolve()


def test_card_render_then_parse_round_trip(locked_folder):
    path = write_model_card(locked_folder, report=_report(), repo_id="user/locked")
    card = ModelCard.load(path)
    meta = card.data.to_dict()[METADATA_KEY]
    assert meta["authorized"] == ["red"] and meta["prohibited"] == ["green"]
    assert meta["variant"] == "supervised" and meta["mask_fraction"] == pytest.approx(0.001)
    assert meta["accuracy"]["green"]["locked"] == pytest.approx(0.36)
    assert meta["accuracy"]["green"]["advantage_removed"] is None  # NaN never reaches YAML
    assert meta["weights"] == {"model.safetensors": sha256_file(locked_folder / "model.safetensors")}
    assert not any(key.startswith("extra_gated") for key in card.data.to_dict())
    assert card.data.base_model == "google/vit-base-patch16-224"

    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results == {
        ("red", "best fresh probe accuracy"): pytest.approx(0.94),
        ("red", "fresh linear probe accuracy"): pytest.approx(0.93),  # pooling chosen on validation accuracy
        ("red", "fresh mlp probe accuracy"): pytest.approx(0.94),
        ("green", "best fresh probe accuracy"): pytest.approx(0.36),
        ("green", "fresh linear probe accuracy"): pytest.approx(0.36),
        ("green", "fresh knn probe accuracy"): pytest.approx(0.34),
    }
    assert all(r.metric_type == "accuracy" and r.dataset_split == "test" for r in card.data.eval_results)

    text = card.text
    for expected in ("## Prohibited uses", "What the lock does not protect against", "Fine-tuning the encoder",
                     "Disguising the input", CITATION, "arXiv", "transformers: 5.24.0",
                     sha256_file(locked_folder / "model.safetensors"), "| green | prohibited | 35.0% | 90.0% | 36.0% |",
                     'AutoModel.from_pretrained("user/locked")', "`alpha` | `1000.0`"):  # fmt: skip
        assert expected in text, expected
    assert "/data/somewhere" not in card.content  # local paths are not published

    authorization = Authorization.from_card(path)
    assert authorization.authorized == ("red",) and authorization.prohibited == ("green",)
    assert authorization.is_prohibited("green") and authorization.is_authorized("red")
    assert authorization.mask_count == 20
    authorization.verify(locked_folder)

    again = write_model_card(locked_folder, report=_report(), repo_id="user/locked").read_text()
    assert again == path.read_text()  # rendering is deterministic


def test_card_without_report_finds_matching_report_only(locked_folder):
    stale = _report() | {"lock": {"mask": {**MASK, "count": 99}, "seed": 7}}
    (locked_folder.parent / "report.json").write_text(json.dumps(stale))
    meta = _front_matter(write_model_card(locked_folder))
    assert meta[METADATA_KEY]["accuracy"] == {} and "model-index" not in meta
    assert meta[METADATA_KEY]["authorized"] == ["red"]  # display name from the DomainSpec, not its path

    (locked_folder.parent / "report.json").write_text(json.dumps(_report()))
    meta = _front_matter(write_model_card(locked_folder))
    assert set(meta[METADATA_KEY]["accuracy"]) == {"red", "green"} and "model-index" in meta


def test_gated_card_asks_to_acknowledge_each_prohibited_use(locked_folder):
    data = EncoderLockCardData.from_folder(locked_folder, report=_report(), gated=True,
                                           prohibited_uses=["face recognition", "weapon detection"])  # fmt: skip
    path = locked_folder / CARD_FILE
    from hf_encoderlock.hub.card import render_model_card

    render_model_card(data).save(path)
    meta = _front_matter(path)
    fields = meta["extra_gated_fields"]
    assert fields["I will not use this model for: face recognition"] == "checkbox"
    assert fields["I will not use this model for: weapon detection"] == "checkbox"
    assert "green" in meta["extra_gated_prompt"]
    assert meta["extra_gated_heading"] and meta["extra_gated_description"] and meta["extra_gated_button_content"]
    assert "Access to this repository is gated" in ModelCard.load(path).text


# ---------------------------------------------------------------------------------------- verified loading
def test_load_locked_detects_tampering_locally(locked_folder):
    write_model_card(locked_folder, report=_report())
    encoder, processor, authorization = load_locked(locked_folder)
    assert authorization.prohibited == ("green",) and processor is encoder.image_processor

    weights = locked_folder / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3  # a plausible "unlocking" edit
    from safetensors.torch import save_file

    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(LockVerificationError, match="model.safetensors: sha256"):
        load_locked(locked_folder)

    weights.write_bytes(original)
    (locked_folder / "pytorch_model.bin").write_bytes(b"smuggled")
    with pytest.raises(LockVerificationError, match="pytorch_model.bin: not declared"):
        load_locked(locked_folder)
    (locked_folder / "pytorch_model.bin").unlink()

    card = locked_folder / CARD_FILE
    text = card.read_text()
    card.write_text(text.replace(f"{METADATA_KEY}:", "other_block:", 1))
    with pytest.raises(LockVerificationError, match="no 'encoderlock:' block"):
        load_locked(locked_folder)
    card.unlink()
    with pytest.raises(LockVerificationError, match="no model card"):
        load_locked(locked_folder)


def test_push_refuses_a_folder_that_is_not_locked(tmp_path):
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match=LOCK_CONFIG_FILE):
        push_locked_to_hub(tmp_path / "plain", "user/plain", token=TOKEN)


# ------------------------------------------------------------------------------------ push and pull (HTTP)
def test_push_then_verified_pull_over_http(locked_folder, fake_hub, tmp_path):
    (locked_folder.parent / "report.json").write_text(json.dumps(_report()))
    info = push_locked_to_hub(locked_folder, "user/locked", gated=True, token=TOKEN, commit_message="lock v1")
    assert info.oid == fake_hub.repos["user/locked"].commits[-1][0]

    calls = [(method, path) for method, path in fake_hub.requests if "agent-harnesses" not in path]
    assert calls == [
        ("POST", "/api/repos/create"),
        ("PUT", "/api/models/user/locked/settings"),  # gated before any file is uploaded
        ("POST", "/api/validate-yaml"),
        ("POST", "/api/models/user/locked/preupload/main"),
        ("POST", "/api/models/user/locked/commit/main"),
    ]
    repo = fake_hub.repos["user/locked"]
    assert repo.gated == "auto" and not repo.private
    files = repo.commits[-1][1]
    assert set(files) == {CARD_FILE, "config.json", "model.safetensors", "preprocessor_config.json", LOCK_CONFIG_FILE}
    assert files["model.safetensors"] == (locked_folder / "model.safetensors").read_bytes()
    remote_card = files[CARD_FILE].decode()
    assert "extra_gated_fields" in remote_card and 'load_locked("user/locked")' in remote_card
    assert "green" in remote_card.split("---")[1]  # accuracies from the report found next to the folder

    with pytest.raises(GatedRepoError):  # the gate holds without credentials
        load_locked("user/locked")

    fake_hub.requests.clear()
    encoder, processor, authorization = load_locked("user/locked", token=TOKEN)
    served = {(method, path) for method, path in fake_hub.requests}
    commit = repo.commits[-1][0]
    assert ("GET", "/api/models/user/locked/revision/main") in served
    assert ("GET", f"/api/models/user/locked/tree/{commit}") in served
    for name in (CARD_FILE, "model.safetensors", "config.json"):
        assert ("GET", f"/user/locked/resolve/{commit}/{name}") in served
    assert authorization.prohibited == ("green",) and authorization.accuracy["green"]["locked"] == pytest.approx(0.36)
    assert any((tmp_path / "hub-cache").glob("models--user--locked/snapshots/*/model.safetensors"))

    model = AutoModel.from_pretrained("user/locked", token=TOKEN)  # plain transformers, same server
    assert AutoImageProcessor.from_pretrained("user/locked", token=TOKEN) is not None
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, encoder.backbone.state_dict()[name])

    tensors = load_file(str(locked_folder / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = torch.zeros_like(tensors[name])
    from safetensors.torch import save as save_bytes

    tampered = dict(files, **{"model.safetensors": save_bytes(tensors, metadata={"format": "pt"})})
    repo.commits.append(("f" * 40, tampered))  # someone replaced the weights but not the card
    with pytest.raises(LockVerificationError, match="does not match"):
        load_locked("user/locked", token=TOKEN)


def test_cli_push_with_private_and_manual_gate(locked_folder, fake_hub, capsys):
    code = cli_main(["push", "--gated", str(locked_folder), "user/cli-locked", "--private", "--manual-approval",
                     "--token", TOKEN, "--include-mask"])  # fmt: skip
    assert code == 0 and "user/cli-locked" in capsys.readouterr().out
    repo = fake_hub.repos["user/cli-locked"]
    assert repo.private and repo.gated == "manual"
    assert MASK_FILE in repo.commits[-1][1]


def test_trainer_save_writes_card_and_push_to_hub(tmp_path, fake_hub):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = EncoderLockConfig(
        output_dir=str(tmp_path / "run"), num_rounds=1, update_steps_per_round=1, weights_per_round=5,
        per_device_train_batch_size=12, score_batches=1, challenge_every=1, adversary_epochs=1, adversary_seeds=1,
        adversary_kinds=["linear"], adversary_learning_rates=[1e-2], use_cpu=True, report_to="none", seed=0,
        disable_tqdm=True, save_strategy="no", hub_model_id="user/tiny-locked", hub_token=TOKEN,
    )  # fmt: skip
    trainer = EncoderLockTrainer(encoder, args, toy_domain(24, 0, "red"), toy_domain(24, 1, "green"), "red", "green")
    trainer.train()
    info = trainer.push_to_hub(commit_message="end of lock", gated=True)
    card = tmp_path / "run" / CARD_FILE
    meta = _front_matter(card)[METADATA_KEY]
    assert meta["authorized"] == ["red"] and meta["prohibited"] == ["green"] and meta["mask_count"] == 5
    assert meta["weights"]["model.safetensors"] == sha256_file(tmp_path / "run" / "model.safetensors")
    repo = fake_hub.repos["user/tiny-locked"]
    assert info.oid == repo.commits[-1][0] and repo.gated == "auto"
    assert {CARD_FILE, "config.json", "model.safetensors", "preprocessor_config.json", LOCK_CONFIG_FILE} == set(
        repo.commits[-1][1]
    )
    assert not math.isnan(meta["mask_fraction"])


def test_offline_settings_are_restored_after_the_server_tests():
    assert (
        constants.HF_HUB_OFFLINE,
        os.environ.get("HF_HUB_OFFLINE"),
        os.environ.get("HF_ENDPOINT"),
    ) == OFFLINE_AT_IMPORT
    assert constants.ENDPOINT != "" and "127.0.0.1" not in constants.HUGGINGFACE_CO_URL_TEMPLATE
