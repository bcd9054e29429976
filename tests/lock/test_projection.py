"""AuthorizedProjection: masked updates that leave the authorized inputs' outputs where they were."""

import pytest
import torch
from torch import nn

from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock import projection as projection_module
from hf_encoderlock.lock.projection import AuthorizedProjection, layer_input_moments, supports_projection
from hf_encoderlock.lock.trainer import EncoderLockTrainer


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=2, stride=2)
        self.linear = nn.Linear(4, 5)

    def forward(self, pixels):
        return self.linear(self.conv(pixels).flatten(2).transpose(1, 2))


def grey(n: int, generator: torch.Generator) -> torch.Tensor:
    """Images whose three channels are equal: no energy along colour differences."""
    return torch.rand(n, 1, 4, 4, generator=generator).expand(n, 3, 4, 4).contiguous()


def test_moments_are_second_moments_of_the_layer_inputs():
    generator = torch.Generator().manual_seed(0)
    model, pixels = TwoLayers(), grey(6, generator)
    moments = layer_input_moments(model, ["conv.weight", "linear.weight"], [pixels[:4], pixels[4:]])
    patches = nn.functional.unfold(pixels, 2, stride=2).transpose(1, 2).reshape(-1, 12)
    torch.testing.assert_close(moments["conv.weight"], patches.T @ patches / len(patches))
    hidden = model.conv(pixels).flatten(2).transpose(1, 2).reshape(-1, 4)
    torch.testing.assert_close(moments["linear.weight"], hidden.T @ hidden / len(hidden), rtol=1e-4, atol=1e-6)


def test_projected_update_leaves_grey_outputs_exactly_and_moves_colour_ones():
    generator = torch.Generator().manual_seed(1)
    model = TwoLayers()
    moments = layer_input_moments(model, ["conv.weight"], [grey(32, generator)])
    mask = torch.zeros_like(model.conv.weight, dtype=torch.bool)
    mask[0, :, 0, 0] = True  # the three colour channels of one pixel: free along their differences
    mask[1, 0, 1, 1] = True  # one entry alone: every direction carries grey energy
    projection = AuthorizedProjection(moments, threshold=1e-6)
    projection.prepare({"conv.weight": mask})
    before = model.conv.weight.detach().clone()
    with torch.no_grad():
        model.conv.weight.add_(torch.randn(before.shape, generator=generator) * mask)
    projection.project({"conv.weight": model.conv.weight}, {"conv.weight": before})
    change = model.conv.weight.detach() - before
    assert not change[~mask].any()
    assert not change[1].any()  # no free direction in row 1
    assert change[0, :, 0, 0].abs().sum() > 0 and change[0, :, 0, 0].sum().abs() < 1e-6
    check, colour = grey(8, generator), torch.rand(8, 3, 4, 4, generator=generator)
    reference = TwoLayers()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.conv.weight.copy_(before)
        torch.testing.assert_close(model.conv(check), reference.conv(check), rtol=0, atol=1e-6)
        assert (model.conv(colour) - reference.conv(colour)).abs().max() > 1e-3
    assert projection.kept_dimensions()["conv.weight"] == pytest.approx(2 / 4)


def test_large_threshold_leaves_updates_alone_and_bad_input_is_refused():
    generator = torch.Generator().manual_seed(2)
    model = TwoLayers()
    moments = layer_input_moments(model, ["linear.weight"], [torch.rand(4, 3, 4, 4, generator=generator)])
    mask = torch.rand(model.linear.weight.shape, generator=generator) > 0.5
    projection = AuthorizedProjection(moments, threshold=1e9)
    projection.prepare({"linear.weight": mask})
    before = model.linear.weight.detach().clone()
    with torch.no_grad():
        model.linear.weight.add_(torch.randn(before.shape, generator=generator) * mask)
    expected = model.linear.weight.detach().clone()
    projection.project({"linear.weight": model.linear.weight}, {"linear.weight": before})
    torch.testing.assert_close(model.linear.weight.detach(), expected)
    with pytest.raises(ValueError, match="threshold"):
        AuthorizedProjection(moments, threshold=-1.0)
    with pytest.raises(TypeError, match="Linear and ungrouped, zero-padded Conv2d"):
        layer_input_moments(nn.Sequential(nn.LayerNorm(4)), ["0.weight"], [torch.rand(2, 4)])


def test_only_linear_and_plain_conv_weights_are_projected_and_conv_moments_do_not_depend_on_chunking(monkeypatch):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise (ConvNeXt-style): inputs do not unfold into its rows
        nn.Conv2d(4, 4, 3, padding="same"),
        nn.Flatten(),
        nn.Linear(4 * 36, 2),
    )
    assert [supports_projection(model, f"{i}.weight") for i in (0, 1, 2, 4)] == [True, False, False, True]
    assert not supports_projection(model, "4.bias")
    pixels = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    whole = layer_input_moments(model, ["0.weight"], [pixels])["0.weight"]
    monkeypatch.setattr(projection_module, "_SLICE_ELEMENTS", 1)  # one image (one row of a linear input) at a time
    sliced = layer_input_moments(model, ["0.weight", "4.weight"], [pixels])
    torch.testing.assert_close(sliced["0.weight"], whole)
    monkeypatch.undo()
    torch.testing.assert_close(sliced["4.weight"], layer_input_moments(model, ["4.weight"], [pixels])["4.weight"])
    patches = nn.functional.unfold(pixels, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    torch.testing.assert_close(whole, patches.T @ patches / len(patches), rtol=1e-5, atol=1e-6)


def test_lock_with_projection_leaves_grey_authorized_features_where_they_were(toy_domains, tiny_lock_config):
    """Grey authorized images, the patch embedding as the only candidate, threshold 0: every update moves only along
    colour differences, so the authorized features stay put (float rounding aside) while the prohibited ones move."""

    def greyed(dataset):
        return dataset.map(lambda row: {"image": row["image"].convert("L").convert("RGB")})

    authorized, prohibited = greyed(toy_domains.authorized), toy_domains.prohibited
    moved = {}
    for threshold in (None, 0.0):
        encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
        args = tiny_lock_config(
            objective="information",
            prohibited_poolings=["auto"],
            candidate_blocks=[-1],
            authorized_projection=threshold,
            weights_per_round=40,
            best_model_criterion="last",
        )
        trainer = EncoderLockTrainer(encoder, args, authorized, prohibited, "grey", "green")
        before = {
            role: trainer.encode(data) for role, data in (("a", trainer.val_authorized), ("p", trainer.val_prohibited))
        }
        weight = encoder.backbone.embeddings.patch_embeddings.projection.weight.detach().clone()
        trainer.train()
        assert trainer.mask and (encoder.backbone.embeddings.patch_embeddings.projection.weight != weight).any()
        moved[threshold] = {
            role: float((trainer.encode(data) - before[role]).abs().max())
            for role, data in (("a", trainer.val_authorized), ("p", trainer.val_prohibited))
        }
    assert moved[0.0]["a"] < 1e-4, moved
    assert moved[0.0]["p"] > 1e-3 and moved[None]["a"] > 1e-3, moved


def test_selection_scores_only_the_free_part_of_a_gradient():
    generator = torch.Generator().manual_seed(3)
    model = TwoLayers()
    moments = layer_input_moments(model, ["conv.weight"], [grey(32, generator)])
    projection = AuthorizedProjection(moments, threshold=1e-6)
    grey_gradient = torch.randn(4, 1, 2, 2, generator=generator).expand(4, 3, 2, 2)
    assert projection.free_gradient("conv.weight", grey_gradient).abs().max() < 1e-5
    colour_gradient = torch.randn(4, 3, 2, 2, generator=generator)
    free = projection.free_gradient("conv.weight", colour_gradient)
    torch.testing.assert_close(free, colour_gradient - colour_gradient.mean(dim=1, keepdim=True), atol=1e-5, rtol=0)
    other = torch.randn(5, 4, generator=generator)
    assert projection.free_gradient("linear.weight", other) is other


def test_a_fully_selected_row_is_projected_like_the_layers_free_gradient():
    generator = torch.Generator().manual_seed(5)
    model = TwoLayers()
    moments = layer_input_moments(model, ["conv.weight"], [grey(32, generator)])
    projection = AuthorizedProjection(moments, threshold=1e-6)
    mask = torch.zeros_like(model.conv.weight, dtype=torch.bool)
    mask[0] = True  # a whole row: shares the layer's free projector
    mask[1, :, 0, 0] = True  # part of a row: its own projector
    projection.prepare({"conv.weight": mask})
    before = model.conv.weight.detach().clone()
    step = torch.randn(before.shape, generator=generator) * mask
    with torch.no_grad():
        model.conv.weight.add_(step)
    projection.project({"conv.weight": model.conv.weight}, {"conv.weight": before})
    change = model.conv.weight.detach() - before
    torch.testing.assert_close(change[0], projection.free_gradient("conv.weight", step)[0], atol=1e-6, rtol=0)
    assert not change[2:].any() and not change[1][~mask[1]].any()
    assert change[1, :, 0, 0].sum().abs() < 1e-6 and change[1, :, 0, 0].abs().sum() > 0
    assert projection.names == ["conv.weight"]
    assert projection.kept_dimensions()["conv.weight"] == pytest.approx((8 + 2) / (12 + 3))


@pytest.mark.parametrize("grey_authorized", [True, False], ids=["grey-authorized", "colour-authorized"])
def test_a_projection_that_leaves_the_prohibited_gradient_no_room_is_reported(
    toy_domains, tiny_lock_config, caplog, grey_authorized
):
    """Threshold 0 on the patch embedding: grey authorized images leave colour differences free, so much of the
    prohibited gradient gets through; colour ones use every input direction, so almost none does, and the user is
    warned before the lock runs on."""
    authorized = toy_domains.authorized
    if grey_authorized:
        authorized = authorized.map(lambda row: {"image": row["image"].convert("L").convert("RGB")})
    args = tiny_lock_config(
        objective="information",
        prohibited_poolings=["auto"],
        candidate_blocks=[-1],
        authorized_projection=0.0,
        num_rounds=1,
        update_steps_per_round=1,
        best_model_criterion="last",
    )
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    trainer = EncoderLockTrainer(encoder, args, authorized, toy_domains.prohibited, "a", "green")
    with caplog.at_level("WARNING", logger="hf_encoderlock.lock.rounds"):
        trainer.train()
    (share,) = [h["projection_free_share"] for h in trainer.history if "projection_free_share" in h]
    warned = any("leave free" in record.getMessage() for record in caplog.records)
    if grey_authorized:
        assert share > 0.1 and not warned
    else:
        assert share < 0.01 and warned
