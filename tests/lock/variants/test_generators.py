"""Zero-shot variant: synthetic prohibited-data generators, and a lock that generates its own prohibited data."""

import numpy as np
import pytest
from datasets import Dataset, Features
from datasets import Image as ImageFeature

from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from hf_encoderlock.lock.variants.generators import (
    GENERATORS,
    DomainShiftGenerator,
    GlyphGenerator,
    ShapeGenerator,
    TextToImageGenerator,
    generate_prohibited,
)
from tests.helpers import VARIANT_LOCK, toy_domain


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_deterministic_labelled_and_sized(name):
    authorized = toy_domain(30, 0, "red")
    make = {"shifts": DomainShiftGenerator, "shapes": ShapeGenerator, "glyphs": GlyphGenerator}[name]
    generator = make() if name == "shifts" else make(image_size=16)
    first, again = generator.generate(40, 3, authorized), generator.generate(40, 3, authorized)
    assert len(first) == 40 and first[0]["image"].size == (16, 16) and first[0]["image"].mode == "RGB"
    assert first["label"] == again["label"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first["image"], again["image"]))
    assert len(set(first["label"])) == (3 if name == "shifts" else 10)
    other = generator.generate(40, 4, authorized)
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first["image"], other["image"]))


def test_generate_prohibited_combines_generators_and_rejects_bad_requests():
    authorized = toy_domain(30, 0, "red")
    data = generate_prohibited(["shifts", "shapes"], authorized, 50, 0)
    assert len(data) == 50
    assert data.features["label"].names[:4] == ["shifts/c0", "shifts/c1", "shifts/c2", "shapes/circle"]
    with pytest.raises(ValueError, match="unknown zero-shot generators"):
        generate_prohibited(["paint"], authorized, 10, 0)
    with pytest.raises(ValueError, match="needs authorized data"):
        DomainShiftGenerator().generate(10, 0, None)


def test_text_to_image_generator_explains_its_optional_dependency():
    import importlib.util

    if importlib.util.find_spec("diffusers") is not None:  # pragma: no cover - it would download a model
        pytest.skip("diffusers is installed")
    with pytest.raises(ImportError, match="pip install diffusers"):
        TextToImageGenerator({"cat": "a photo of a cat"}).generate(2, 0)


def test_zero_shot_trainer_generates_its_prohibited_data_and_records_the_generators(tmp_path, tiny_lock_config):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    args = tiny_lock_config(
        preset=VARIANT_LOCK,
        variant="zero-shot",
        objective="information",
        zero_shot_images=60,
        zero_shot_generators=["shifts", "shapes"],
    )
    trainer = EncoderLockTrainer(encoder, args, toy_domain(48, 0, "red"), None, "red")
    assert len(trainer.lock_prohibited) + len(trainer.val_prohibited) == 60
    assert trainer.lock_prohibited.num_classes == 3 + 10 and not trainer.pseudo_labelled
    trainer.train()
    summary = trainer.lock_summary()
    trainer.save_model(str(tmp_path / "zero-shot"))
    card = (tmp_path / "zero-shot" / "README.md").read_text()
    assert "variant: zero-shot" in card and "synthetic (shifts, shapes)" in card
    assert summary["variant"] == "zero-shot"
    assert summary["prohibited"] == [{"zero_shot_generators": ["shifts", "shapes"], "images": 60}]
    images_only = Dataset.from_dict(
        {"image": list(toy_domain(40, 5, "green")["image"])}, features=Features({"image": ImageFeature()})
    )
    user = EncoderLockTrainer(
        tiny_vit_encoder(seed=0, image_size=16, patch_size=4), args, toy_domain(48, 0, "red"), images_only
    )
    assert user.pseudo_labelled and user.lock_summary()["prohibited"][0]["zero_shot_generators"] == ["user-supplied"]
