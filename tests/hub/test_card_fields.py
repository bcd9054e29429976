"""The model card as the Hub reads it: base_model, license, datasets, rounded figures, model-index, poolings, the
standard sections, no local path anywhere, and the ``encoderlock:`` block still parsed and verified."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from hf_encoderlock._files import CARD_FILE, LOCK_CONFIG_FILE
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.hub import Authorization, load_locked, write_model_card
from hf_encoderlock.hub.authorization import METADATA_KEY
from hf_encoderlock.hub.manifest import sha256_file

PRIVATE_DIR = "/data/private/red-scans"  # where the owner kept the authorized images: must never be published
HUB_DATASET = "someone/green-faces"
SECTIONS = (
    "## Model Details",
    "### Model Description",
    "### Model Sources",
    "## Uses",
    "### Direct Use",
    "### Downstream Use",
    "### Out-of-Scope Use",
    "#### Prohibited uses",
    "## Bias, Risks, and Limitations",
    "### What the lock does not protect against",
    "### Recommendations",
    "## How to Get Started with the Model",
    "## Training Details",
    "### Training Data",
    "### Training Procedure",
    "#### Training Hyperparameters",
    "## Evaluation",
    "### Testing Data, Factors & Metrics",
    "### Results",
    "## Citation",
    "## Framework versions",
    "## Weight files",
)


def lock_config(**overrides) -> dict:
    """``encoderlock_config.json`` of a lock on a local folder and a built-in (authorized) and a Hub dataset."""
    return {
        "format": "encoderlock/v1",
        "variant": "supervised",
        "objective": "paper",
        "base_model": "google/vit-base-patch16-224",
        "poolings": ["cls", "mean"],
        "authorized": [{"name": PRIVATE_DIR, "config": None}, "mnist"],
        "prohibited": [{"name": HUB_DATASET, "config": "v2"}],
        "hyperparameters": {"alpha": 1000.0, "learning_rate": 0.1 + 0.2, "num_rounds": 2},
        "mask": {"count": 23, "fraction": 23 / 20000 + 1e-19, "num_parameters": 20000, "per_layer": {"a.weight": 23}},
        "rounds_completed": 2,
        "best_round": 2,
        "seed": 7,
        "versions": {"hf_encoderlock": "0.1.0.dev0", "transformers": "5.24.0"},
        **overrides,
    }


def report() -> dict:
    """A probe report of the same lock (same mask and seed) with floats as arithmetic leaves them."""

    def row(domain, role, locked):
        return {"domain": domain, "role": role, "random_twin": 0.1 + 0.2, "victim": 0.95, "locked": locked,
                "lock_own_head": 0.97, "attacker_choice_locked": "linear/cls"}  # fmt: skip

    def score(domain, head, mean):
        return {"role": "encoder", "domain": domain, "head": head, "pooling": "cls", "fraction": 1.0, "mean": mean,
                "validation_accuracy": [mean], "test_accuracy": [mean]}  # fmt: skip

    return {
        "authorized": ["red-scans", "mnist"],
        "prohibited": [f"{HUB_DATASET}:v2"],
        "fraction": 1.0,
        "table": [
            row("red-scans", "authorized", 0.9100000000000001),
            row("mnist", "authorized", 0.8766666666666667),
            row(f"{HUB_DATASET}:v2", "prohibited", 0.28300000000000003),
        ],
        "verdict": {f"{HUB_DATASET}:v2": "lock holds"},
        "lock": {"mask": lock_config()["mask"], "seed": 7},
        "experiment": {"model": "/home/owner/checkpoints/vit"},  # a local checkpoint: not a base_model
        "probe_after": {"scores": [score(f"{HUB_DATASET}:v2", "linear", 0.28300000000000003)]},
    }


def make_locked(folder: Path, **overrides) -> Path:
    """A folder as the trainer saves it: a tiny ViT and its lock config (``overrides`` change the config)."""
    tiny_vit_encoder(seed=0, image_size=16, patch_size=4).save_pretrained(folder)
    (folder / LOCK_CONFIG_FILE).write_text(json.dumps(lock_config(**overrides)))
    return folder


@pytest.fixture
def locked_folder(tmp_path) -> Path:
    return make_locked(tmp_path / "locked")


def floats(value):
    """Every float in a parsed YAML tree."""
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from floats(item)
    elif isinstance(value, list):
        for item in value:
            yield from floats(item)


# ------------------------------------------------------------------------------------------------- base_model
def test_a_hub_base_model_is_named_only_when_asked(locked_folder):
    # the lock config records the Hub source, but naming it points readers to the unlocked weights
    card = ModelCard.load(write_model_card(locked_folder, report=report(), repo_id="user/locked"))
    assert card.data.base_model is None and "google/vit-base-patch16-224" not in card.text
    asked = write_model_card(
        locked_folder, report=report(), repo_id="user/locked", base_model="google/vit-base-patch16-224"
    )
    card = ModelCard.load(asked)
    assert card.data.base_model == "google/vit-base-patch16-224"
    assert "[google/vit-base-patch16-224](https://huggingface.co/google/vit-base-patch16-224)" in card.text
    # kept when the card is rendered again (a push re-renders it): it was asked for
    assert ModelCard.load(write_model_card(locked_folder, report=report())).data.base_model is not None


@pytest.mark.parametrize("where", ["absolute", "relative", "missing"])
def test_a_local_base_model_is_never_published(tmp_path, monkeypatch, where):
    checkpoint = tmp_path / "checkpoints" / "vit"
    checkpoint.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    base_model = {"absolute": str(checkpoint), "relative": "checkpoints/vit", "missing": "/home/owner/vit"}[where]
    folder = make_locked(tmp_path / "locked", base_model=base_model)
    path = write_model_card(folder, report=report())
    card = ModelCard.load(path)
    assert card.data.base_model is None and "base_model" not in card.data.to_dict()
    assert "**Base model:** not recorded" in card.text
    text = path.read_text()
    for leak in (base_model, str(tmp_path), "/home/owner", PRIVATE_DIR):
        assert leak not in text, leak


# --------------------------------------------------------------------------------------------------- license
def test_license_is_an_option_and_survives_a_re_render(locked_folder):
    card = ModelCard.load(write_model_card(locked_folder, report=report()))
    assert card.data.license is None and "**License:** not specified" in card.text

    card = ModelCard.load(write_model_card(locked_folder, report=report(), license="apache-2.0"))
    assert card.data.license == "apache-2.0" and "**License:** apache-2.0" in card.text

    again = ModelCard.load(write_model_card(locked_folder, repo_id="user/locked"))  # e.g. on push: kept
    assert again.data.license == "apache-2.0"
    assert ModelCard.load(write_model_card(locked_folder, license="mit")).data.license == "mit"


# -------------------------------------------------------------------------------------------------- datasets
def test_datasets_lists_hub_ids_only_and_the_text_describes_the_rest(locked_folder):
    path = write_model_card(locked_folder, report=report(), repo_id="user/locked")
    card = ModelCard.load(path)
    assert card.data.datasets == [HUB_DATASET]  # no config suffix, no built-in, no local folder
    text = card.text
    assert "| mnist | authorized | hf_encoderlock's built-in offline domain `mnist`: real handwritten digits" in text
    assert "| red-scans | authorized | a local dataset that is not published |" in text
    assert f"[{HUB_DATASET}](https://huggingface.co/datasets/{HUB_DATASET}) (config `v2`)" in text
    assert PRIVATE_DIR not in path.read_text() and "/data/private" not in path.read_text()

    dataset = next(r for r in card.data.eval_results if r.dataset_name == f"{HUB_DATASET}:v2")
    assert (dataset.dataset_type, dataset.dataset_config) == (HUB_DATASET, "v2")


def test_no_dataset_key_when_every_domain_is_built_in_or_synthetic(tmp_path):
    folder = make_locked(
        tmp_path / "locked",
        authorized=["MNIST_M"],
        prohibited=[{"zero_shot_generators": ["shapes"], "images": 60}],
        base_model=None,
    )
    card = ModelCard.load(write_model_card(folder))
    assert "datasets" not in card.data.to_dict() and "base_model" not in card.data.to_dict()
    assert "built-in offline domain `mnist-m`" in card.text and "synthetic images made by" in card.text


# ---------------------------------------------------------------------------------------------------- figures
def test_figures_are_rounded_in_the_yaml_and_the_text(locked_folder):
    path = write_model_card(locked_folder, report=report(), repo_id="user/locked")
    raw = path.read_text()
    assert "0.28300000000000003" not in raw and "0.30000000000000004" not in raw and "0.876666" not in raw
    meta = ModelCard.load(path).data.to_dict()
    block = meta[METADATA_KEY]
    assert block["accuracy"][f"{HUB_DATASET}:v2"]["locked"] == 0.283
    assert block["accuracy"]["mnist"]["locked"] == 0.8767 and block["mask_fraction"] == 0.00115
    for value in floats({k: v for k, v in block.items() if k != "mask_fraction"}):
        assert round(value, 4) == value, value
    for value in floats(meta["model-index"]):
        assert round(value, 4) == value, value
    text = ModelCard.load(path).text
    assert "| mnist | authorized | 30.0% | 95.0% | 87.7% | 97.0% |" in text
    assert "23 of 20000 weights (0.115%)" in text and "`learning_rate` | `0.3`" in text


# ------------------------------------------------------------------------------------------------ model-index
def test_model_index_is_named_after_the_repository_and_round_trips(locked_folder):
    card = ModelCard.load(write_model_card(locked_folder, report=report(), repo_id="user/locked"))
    index = card.data.to_dict()["model-index"]
    assert [entry["name"] for entry in index] == ["user/locked"]
    name, results = model_index_to_eval_results(index)
    assert name == "user/locked" and results == card.data.eval_results
    assert eval_results_to_model_index(name, results) == index
    assert {r.metric_name for r in results} == {"best fresh probe accuracy", "fresh linear probe accuracy"}

    unnamed = ModelCard.load(write_model_card(locked_folder, report=report()))
    assert unnamed.data.to_dict()["model-index"][0]["name"] == "locked"  # no repository yet: the folder's name


# -------------------------------------------------------------------------------------------- poolings, sections
def test_poolings_locked_are_in_the_text_and_the_block(locked_folder):
    path = write_model_card(locked_folder, report=report())
    assert "- Poolings locked: `cls`, `mean`" in ModelCard.load(path).text
    assert Authorization.from_card(path).poolings == ("cls", "mean")

    without = {k: v for k, v in lock_config().items() if k != "poolings"}
    (locked_folder / LOCK_CONFIG_FILE).write_text(json.dumps(without))
    path = write_model_card(locked_folder, report=report())
    assert "- Poolings locked: not recorded" in ModelCard.load(path).text
    assert Authorization.from_card(path).poolings == ()


@pytest.mark.parametrize("with_report", [True, False])
def test_every_standard_section_is_present_in_order(locked_folder, with_report):
    text = ModelCard.load(write_model_card(locked_folder, report=report() if with_report else None)).text
    headings = [line for line in text.splitlines() if re.match(r"#{2,4} ", line)]
    positions = [headings.index(section) for section in SECTIONS]
    assert positions == sorted(positions), headings
    kept = ("Any attempt to undo or circumvent the lock", "Fine-tuning the encoder", "Disguising the input",
            'load_locked("locked")', "LockedEncoder.from_pretrained", "arXiv", "transformers: 5.24.0",
            "| `a.weight` | 23 |", "Rounds completed: 2 (encoder kept from round 2)", "Seed: 7")  # fmt: skip
    for information in kept:
        assert information in text, information


def test_the_changed_tensors_are_named_as_the_weights_file_holds_them(locked_folder):
    mask = {**lock_config()["mask"], "per_layer": {"layers.0.attention.q_proj.weight": 23}}
    mask["saved_keys"] = {"layers.0.attention.q_proj.weight": "encoder.layer.0.attention.attention.query.weight"}
    (locked_folder / LOCK_CONFIG_FILE).write_text(json.dumps(lock_config(mask=mask)))
    text = ModelCard.load(write_model_card(locked_folder, report=report())).text
    assert "| Tensor | Key in `model.safetensors` | Weights changed |" in text
    assert "| `layers.0.attention.q_proj.weight` | `encoder.layer.0.attention.attention.query.weight` | 23 |" in text


# --------------------------------------------------------------------------------------- authorization, Hub checks
def test_the_authorization_block_still_parses_and_verifies(locked_folder):
    path = write_model_card(locked_folder, report=report(), repo_id="user/locked")
    authorization = Authorization.from_card(path)
    assert authorization.authorized == ("red-scans", "mnist")
    assert authorization.prohibited == (f"{HUB_DATASET}:v2",)
    assert authorization.variant == "supervised" and authorization.mask_count == 23
    assert authorization.weights == {"model.safetensors": sha256_file(locked_folder / "model.safetensors")}
    authorization.verify(locked_folder)
    encoder, processor, loaded = load_locked(locked_folder)
    assert loaded == authorization and processor is encoder.image_processor


def test_a_re_rendered_card_keeps_the_results_recorded_for_the_same_weights(locked_folder):
    """A downloaded snapshot has its card but not report.json: rendering again (e.g. to push it elsewhere) keeps
    the measured results as long as the weights are those the card describes."""
    first = ModelCard.load(write_model_card(locked_folder, report=report(), repo_id="user/locked"))
    again = ModelCard.load(write_model_card(locked_folder, repo_id="user/locked"))
    assert again.data.to_dict() == first.data.to_dict() and again.text == first.text

    tiny_vit_encoder(seed=1, image_size=16, patch_size=4).save_pretrained(locked_folder)  # other weights
    other = ModelCard.load(write_model_card(locked_folder, repo_id="user/locked"))
    assert other.data.to_dict()[METADATA_KEY]["accuracy"] == {} and "model-index" not in other.data.to_dict()
    assert "No probe-suite results were attached" in other.text


def test_the_card_passes_huggingface_hub_checks(locked_folder, fake_hub):
    path = write_model_card(locked_folder, report=report(), repo_id="user/locked", gated=True)
    card = ModelCard.load(path, ignore_metadata_errors=False)  # strict: a bad model-index would raise here
    card.validate()  # POST /api/validate-yaml on the local server
    assert ("POST", "/api/validate-yaml") in fake_hub.requests
    reloaded = ModelCard(str(card), ignore_metadata_errors=False)
    assert reloaded.data.to_dict() == card.data.to_dict()
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.to_dict()["extra_gated_fields"] and (locked_folder / CARD_FILE) == path
