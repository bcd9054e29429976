"""Model card and authorization metadata: render, parse, find the matching report, gate prohibited uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_encoderlock._files import CARD_FILE
from hf_encoderlock.hub.authorization import METADATA_KEY, Authorization
from hf_encoderlock.hub.card import CITATION, TEMPLATE_PATH, EncoderLockCardData, render_model_card, write_model_card
from hf_encoderlock.hub.manifest import sha256_file
from tests.helpers import MASK, card_report, front_matter


# --------------------------------------------------------------------------------------------------- card
def test_the_rendered_template_is_the_top_level_file():
    """One template: the package renders the repository's model_card_template.md itself (shipped through a link)."""
    top_level = Path(__file__).resolve().parents[2] / "model_card_template.md"
    assert TEMPLATE_PATH.resolve() == top_level.resolve()


def test_card_render_then_parse_round_trip(locked_folder):
    path = write_model_card(locked_folder, report=card_report(), repo_id="user/locked")
    card = ModelCard.load(path)
    meta = card.data.to_dict()[METADATA_KEY]
    assert meta["authorized"] == ["red"] and meta["prohibited"] == ["green"]
    assert meta["variant"] == "supervised" and meta["mask_fraction"] == pytest.approx(0.001)
    assert meta["accuracy"]["green"]["locked"] == pytest.approx(0.36)
    assert meta["accuracy"]["green"]["advantage_removed"] is None  # NaN never reaches YAML
    assert meta["weights"] == {"model.safetensors": sha256_file(locked_folder / "model.safetensors")}
    assert not any(key.startswith("extra_gated") for key in card.data.to_dict())
    assert card.data.base_model is None  # the lock config's Hub source is named only when asked

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

    again = write_model_card(locked_folder, report=card_report(), repo_id="user/locked").read_text()
    assert again == path.read_text()  # rendering is deterministic


@pytest.mark.parametrize("dropped", [False, True])
def test_card_says_when_auto_dropped_the_projection(locked_folder, dropped):
    config = json.loads((locked_folder / "encoderlock_config.json").read_text())
    (locked_folder / "encoderlock_config.json").write_text(json.dumps({**config, "projection_dropped": dropped}))
    text = ModelCard.load(write_model_card(locked_folder, report=card_report(), repo_id="user/locked")).text
    assert ("Authorized projection: dropped at the first round" in text) is dropped
    if not dropped:  # no blank line left where the line would be
        assert "- Rounds completed: 2 (encoder kept from round 2)\n- Seed: 7" in text


@pytest.mark.parametrize(
    "bound, expected",
    [
        ("absent", "no bound on them is recorded"),
        (None, "this lock did not bound them"),
        (2.5, "kept within 2.5 robust standard\n  deviations of its tensor's median"),
    ],
)
def test_card_names_the_data_free_weight_edit_as_the_lock_bounded_it(locked_folder, bound, expected):
    """The limitations say whether a data-free outlier reset can find the changed weights (docs/THREAT_MODEL.md)."""
    config = json.loads((locked_folder / "encoderlock_config.json").read_text())
    hyperparameters = {k: v for k, v in config["hyperparameters"].items() if k != "weight_bound"}
    if bound != "absent":
        hyperparameters["weight_bound"] = bound
    (locked_folder / "encoderlock_config.json").write_text(json.dumps({**config, "hyperparameters": hyperparameters}))
    text = ModelCard.load(write_model_card(locked_folder, report=card_report(), repo_id="user/locked")).text
    assert "**Editing the weights without data.**" in text and expected in text
    others = {"no bound on them is recorded", "this lock did not bound them", "robust standard"} - {expected}
    assert not any(other in text for other in others if other not in expected)


def test_card_without_report_finds_matching_report_only(locked_folder):
    stale = card_report() | {"lock": {"mask": {**MASK, "count": 99}, "seed": 7}}
    (locked_folder.parent / "report.json").write_text(json.dumps(stale))
    meta = front_matter(write_model_card(locked_folder))
    assert meta[METADATA_KEY]["accuracy"] == {} and "model-index" not in meta
    assert meta[METADATA_KEY]["authorized"] == ["red"]  # display name from the DomainSpec, not its path

    (locked_folder.parent / "report.json").write_text(json.dumps(card_report()))
    meta = front_matter(write_model_card(locked_folder))
    assert set(meta[METADATA_KEY]["accuracy"]) == {"red", "green"} and "model-index" in meta


def test_gated_card_asks_to_acknowledge_each_prohibited_use(locked_folder):
    data = EncoderLockCardData.from_folder(locked_folder, report=card_report(), gated=True,
                                           prohibited_uses=["face recognition", "weapon detection"])  # fmt: skip
    path = locked_folder / CARD_FILE
    render_model_card(data).save(path)
    meta = front_matter(path)
    fields = meta["extra_gated_fields"]
    assert fields["I will not use this model for: face recognition"] == "checkbox"
    assert fields["I will not use this model for: weapon detection"] == "checkbox"
    assert "green" in meta["extra_gated_prompt"]
    assert meta["extra_gated_heading"] and meta["extra_gated_description"] and meta["extra_gated_button_content"]
    assert "Access to this repository is gated" in ModelCard.load(path).text
    # the gate does not claim that probing fails: the lock's own verdict may say it does not (found on the user's path)
    assert "meant to make probing it for green fail" in meta["extra_gated_description"]
    assert "says how far it does" in meta["extra_gated_description"]


def test_card_states_the_adaptive_worst_case_beside_fresh_probes(locked_folder):
    report = card_report()
    green = report["table"][1]
    green.update(
        advantage_removed=0.98,
        adaptive_worst=0.899,
        adaptive_removed=0.002,
        adaptive_attack="sanitize: reset_outliers 6",
    )
    path = write_model_card(locked_folder, report=report, repo_id="user/locked")
    card = ModelCard.load(path)
    assert "- green: 89.9% (sanitize: reset_outliers 6): 0.2% of the advantage removed, against 98.0% under fresh" in (
        card.text
    )
    meta = card.data.to_dict()[METADATA_KEY]["accuracy"]["green"]
    assert meta["adaptive_worst"] == pytest.approx(0.899) and meta["adaptive_attack"] == "sanitize: reset_outliers 6"
    # a card re-rendered from its own metadata (no report.json beside it) keeps the line
    path.with_name("report.json").unlink(missing_ok=True)
    again = write_model_card(locked_folder, repo_id="user/locked").read_text()
    assert "0.2% of the advantage removed" in again
    assert "No attacker who knows the method" not in again
    # without the adaptive attacker (adaptive_attacks off) the card says so, not nothing (found on the user's path)
    skipped = write_model_card(locked_folder, report=card_report(), repo_id="user/locked").read_text()
    assert "No attacker who knows the method (weight sanitisation, input transformations) was run" in skipped


def test_card_shows_no_ratio_within_noise_and_says_when_the_lock_fell_below_the_twin(locked_folder):
    report = card_report()
    report["table"][1].update(random_twin=0.35, victim=0.80, locked=0.30, advantage_removed=(0.80 - 0.30) / 0.45)
    report["table"].append({"domain": "digits", "role": None, "random_twin": 0.955, "victim": 0.961,
                            "locked": 0.935, "advantage_removed": 4.0, "advantage_kept": -3.0})  # fmt: skip
    text = ModelCard.load(write_model_card(locked_folder, report=report, repo_id="user/locked")).text
    assert "| green | prohibited | 35.0% | 80.0% | 30.0% |" in text and "111.1% (below the twin)" in text
    assert "| digits | other | 95.5% | 96.1% | 93.5% | n/a | within noise |" in text and "400.0%" not in text
