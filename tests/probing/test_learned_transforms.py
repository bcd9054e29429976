"""The learned colour and patch maps: they start as the identity, leave the encoder as they found it, are fitted on
rows no probe seed validates on, and find information a fixed transform (or, for the patch map, a colour map) cannot
reach."""

import logging

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image
from torch import nn

from hf_encoderlock.encoders import EncoderAdapter, tiny_vit_encoder
from hf_encoderlock.probing import adaptive
from hf_encoderlock.probing.adaptive import FRESH_PROBE, TRANSFORM, AdaptiveConfig, AdaptiveError, run_adaptive_suite
from hf_encoderlock.probing.learned_transforms import (
    LEARNED_TRANSFORMS,
    ColourMap,
    LearnedMapFit,
    PatchMap,
    fit_colour_map,
    fit_patch_map,
    fit_rows,
    input_mapped_encoder,
    patch_grid_problem,
)
from hf_encoderlock.probing.transforms import TransformError

FAST = dict(seeds=(0,), heads=("linear",), progress=False)


class RedOnly(nn.Module):
    """A "locked" encoder that sees only the red channel: whatever the other channels hold is lost to its probes."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(1, 8, 4, stride=4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.patches(pixel_values[:, :1])).mean(dim=(2, 3))


def to_pixels(images):
    return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255.0).permute(2, 0, 1) for i in images])


@pytest.fixture(scope="module")
def red_only():
    torch.manual_seed(0)
    return EncoderAdapter(RedOnly(), pooling="mean", preprocess_fn=to_pixels, name="red-only")


def two_class_domain(n_train, n_test, paint, seed=0):
    """Two classes ("dark", "bright") of 16 x 16 images, each drawn by ``paint(rng, label)``."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = [i % 2 for i in range(n)]
        images = [Image.fromarray(paint(rng, label)) for label in labels]
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=["dark", "bright"])})
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    return DatasetDict(train=split(n_train), test=split(n_test))


def blue_domain(n_train, n_test, seed=0):
    """Two classes told apart by the blue channel only (dark or bright); red and green are noise."""

    def paint(rng, label):
        pixels = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
        pixels[:, :, 2] = rng.integers(0, 60, (16, 16)) + 190 * label
        return pixels

    return two_class_domain(n_train, n_test, paint, seed)


def test_a_colour_map_starts_as_the_identity():
    pixels = torch.rand(2, 3, 5, 5) * 2 - 1  # normalised like a ViT processor's (mean 0.5, std 0.5)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.5)
    colour_map = ColourMap(3, 16, mean, std, 0.0, 1.0)
    assert torch.allclose(colour_map(pixels), pixels, atol=1e-6)


def test_fit_rows_never_take_a_validation_row():
    validation = [np.array([0, 3, 5]), np.array([5, 7])]
    rows = fit_rows(10, validation, max_images=100, seed=1)
    assert rows.tolist() == [1, 2, 4, 6, 8, 9]
    assert len(fit_rows(10, validation, max_images=3, seed=1)) == 3
    with pytest.raises(TransformError, match="at least 2 training rows outside every probe seed's validation part"):
        fit_rows(3, [np.array([0, 1])], max_images=10)


def test_fitting_leaves_the_encoder_as_it_was(red_only):
    domain = blue_domain(16, 4)["train"]
    before = {k: v.clone() for k, v in red_only.state_dict().items()}
    red_only.backbone.train()
    fit_colour_map(red_only, domain["image"], domain["label"], 4, LearnedMapFit(epochs=1, batch_size=8))
    assert all(torch.equal(before[k], v) for k, v in red_only.state_dict().items())
    assert red_only.backbone.training and all(p.requires_grad for p in red_only.backbone.parameters())
    red_only.backbone.eval()
    with pytest.raises(TransformError, match="whole number >= 0 of hidden units"):
        fit_colour_map(red_only, domain["image"], domain["label"], -1)


def test_the_learned_map_finds_what_the_encoder_ignores(red_only):
    """The label lives in the blue channel, which the encoder never reads: fresh probes are at chance, greyscale
    dilutes the blue channel among noise, and the learned map routes it to red."""
    domains = {"p": blue_domain(160, 60)}
    config = AdaptiveConfig(sanitizers=(), transforms=("greyscale",), combine=False, **FAST)
    baselines = {"p": {"victim": 1.0, "random_twin": 0.5}}
    report = run_adaptive_suite(red_only, domains, config, baselines=baselines)
    by_attack = {o.attack: o for o in report.outcomes}
    assert set(by_attack) == {"none", "greyscale", "colour_map"}
    assert by_attack["none"].family == FRESH_PROBE and by_attack["none"].test < 0.75
    assert by_attack["colour_map"].family == TRANSFORM and by_attack["colour_map"].strength == 16.0
    assert by_attack["colour_map"].test >= 0.95
    assert by_attack["colour_map"].test > by_attack["greyscale"].test
    assert report.worst_case("p").attack == "colour_map"


def test_a_learned_map_is_fitted_through_the_sanitised_encoder_when_combined(red_only, monkeypatch):
    fitted_on = []
    real = adaptive.fit_learned_transform

    def spy(name, strength, model, *args, **kwargs):
        fitted_on.append(model)
        return real(name, strength, model, *args, **kwargs)

    monkeypatch.setattr(adaptive, "fit_learned_transform", spy)
    config = AdaptiveConfig(sanitizers=("gaussian_noise",), transforms=(), **FAST)
    report = run_adaptive_suite(red_only, {"p": blue_domain(40, 10)}, config)
    combined = [o for o in report.outcomes if o.family == "sanitize+transform"]
    assert [o.attack for o in combined] == ["gaussian_noise 0.05 + colour_map 16"]
    assert len(fitted_on) == 2 and fitted_on[0] is red_only and fitted_on[1] is not red_only


def test_a_colour_mapped_view_shares_the_weights(red_only):
    colour_map = ColourMap(3, 0, torch.zeros(3, 1, 1), torch.ones(3, 1, 1), 0.0, 1.0)
    view = input_mapped_encoder(red_only, colour_map, "colour_map 0")
    assert view.backbone is red_only.backbone and view.name == "red-only [colour_map 0]"
    image = Image.fromarray(np.full((16, 16, 3), 80, dtype=np.uint8))
    assert torch.allclose(view.preprocess([image]), red_only.preprocess([image]))


def test_unknown_learned_transforms_are_refused():
    assert "colour_map" in LEARNED_TRANSFORMS
    with pytest.raises(AdaptiveError, match="learned_transforms must be a subset"):
        AdaptiveConfig(learned_transforms=("style_transfer",))


class FirstRowReader(nn.Module):
    """A "locked" patch encoder that reads only the first pixel row of every 4 x 4 patch: what the other rows hold is
    lost to its probes, and no per-pixel colour function can move it there. Its config names its patch size, as a
    Hugging Face patch-embedding model's does."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"patch_size": 4})()
        self.embed = nn.Conv2d(3, 8, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed(pixel_values[:, :, ::4, :])).mean(dim=(2, 3))


def lower_rows_domain(n_train, n_test, seed=0):
    """Two classes told apart by the brightness of rows 1-3 of every 4 x 4 patch; the first rows are noise."""

    def paint(rng, label):
        pixels = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8) + np.uint8(150 * label)
        pixels[::4] = rng.integers(0, 256, (4, 16, 3))
        return pixels

    return two_class_domain(n_train, n_test, paint, seed)


@pytest.fixture(scope="module")
def first_row_reader():
    torch.manual_seed(0)
    return EncoderAdapter(FirstRowReader(), pooling="mean", preprocess_fn=to_pixels, name="first-row")


def test_a_patch_map_starts_as_the_identity():
    pixels = torch.rand(2, 3, 8, 12) * 2 - 1
    patch_map = PatchMap(3, 4, torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.5), 0.0, 1.0)
    assert patch_map.linear.weight.shape == (48, 48)
    assert torch.allclose(patch_map(pixels), pixels, atol=1e-6)


def test_a_patch_map_needs_patches_that_tile_the_image(red_only, first_row_reader):
    domain = lower_rows_domain(8, 2)["train"]
    with pytest.raises(TransformError, match="red-only reports no patch size"):
        fit_patch_map(red_only, domain["image"], domain["label"])
    with pytest.raises(TransformError, match="5x5 patches; first-row prepares 16x16 images"):
        fit_patch_map(first_row_reader, domain["image"], domain["label"], patch_size=5)


def test_the_suite_checks_the_patch_grid_before_any_work(red_only):
    assert patch_grid_problem(tiny_vit_encoder(seed=1)) is None  # 32 x 32 inputs, 8 x 8 patches
    assert patch_grid_problem(red_only) == "red-only reports no square patch size"
    untiled = tiny_vit_encoder(seed=1, image_size=36, patch_size=8)
    assert patch_grid_problem(untiled) == "tiny-vit's 36x36 inputs do not divide into its 8x8 patches"


def test_fitting_a_patch_map_leaves_the_encoder_as_it_was():
    encoder = tiny_vit_encoder(seed=1)
    domain = lower_rows_domain(16, 4)["train"]
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.backbone.train()
    patch_map = fit_patch_map(encoder, domain["image"], domain["label"], fit=LearnedMapFit(epochs=1, batch_size=8))
    assert patch_map.patch_size == 8 and not patch_map.training
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert encoder.backbone.training and all(p.requires_grad for p in encoder.backbone.parameters())


def test_the_patch_map_finds_what_no_colour_map_can(first_row_reader):
    """The label lives in pixel rows the encoder never reads: fresh probes and the colour map stay near chance, the
    patch map moves the rows the label lives in onto the one the encoder reads."""
    config = AdaptiveConfig(sanitizers=(), transforms=(), combine=False, **FAST)
    report = run_adaptive_suite(
        first_row_reader,
        {"p": lower_rows_domain(160, 60)},
        config,
        baselines={"p": {"victim": 1.0, "random_twin": 0.5}},
    )
    by_attack = {o.attack: o for o in report.outcomes}
    assert set(by_attack) == {"none", "colour_map", "patch_map"}
    assert by_attack["patch_map"].family == TRANSFORM and by_attack["patch_map"].strength == 1e-3
    assert by_attack["none"].test < 0.75 and by_attack["colour_map"].test < 0.75
    assert by_attack["patch_map"].test >= 0.95
    assert report.worst_case("p").attack == "patch_map"


def test_the_patch_map_is_skipped_on_an_encoder_without_patches_and_the_user_told(red_only, caplog):
    config = AdaptiveConfig(sanitizers=(), transforms=("match_image_stats",), combine=False, **FAST)
    with caplog.at_level(logging.WARNING, logger="hf_encoderlock.probing.adaptive"):
        report = run_adaptive_suite(red_only, {"p": blue_domain(40, 10)}, config)
    assert {o.attack for o in report.outcomes} == {"none", "colour_map"}
    assert "skipping patch_map: red-only reports no square patch size" in caplog.text
    assert "skipping match_image_stats: they need an authorized sample" in caplog.text
