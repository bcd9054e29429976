"""LockState's save / load without a trainer: what must survive a checkpoint does, and derived state is rebuilt."""

import torch

from hf_encoderlock.lock.state import LockState
from hf_encoderlock.probing.learned_transforms import ColourMap


def test_the_views_generator_resumes_where_it_stopped_and_derived_state_is_not_saved(tmp_path):
    generator = torch.Generator().manual_seed(7)
    torch.rand(5, generator=generator)  # some views already drawn
    state = LockState(
        mask={"backbone.w": torch.tensor([True, False])},
        view_generator=generator,
        reference_cache=torch.ones(2, 3),
        scheduled_lrs=[0.1],
    )
    state.save(tmp_path)
    loaded = LockState.load(tmp_path, "cpu")
    assert torch.equal(torch.rand(4, generator=loaded.view_generator), torch.rand(4, generator=generator))
    assert loaded.reference_cache is None and loaded.scheduled_lrs is None and loaded.projection is None
    assert torch.equal(loaded.mask["backbone.w"], state.mask["backbone.w"])
    (tmp_path / "none").mkdir()
    LockState(mask=state.mask).save(tmp_path / "none")  # a state without a generator loads without one
    assert LockState.load(tmp_path / "none", "cpu").view_generator is None


def test_the_colour_map_is_saved_and_loaded_to_the_same_function(tmp_path):
    torch.manual_seed(0)
    colour_map = ColourMap(3, 4, torch.full((3,), 0.5), torch.full((3,), 0.25), -0.1, 1.2)
    with torch.no_grad():
        for param in colour_map.parameters():
            param.add_(0.1 * torch.randn_like(param))
    LockState(mask={"backbone.w": torch.tensor([True])}, colour_map=colour_map).save(tmp_path)
    loaded = LockState.load(tmp_path, "cpu").colour_map
    pixels = torch.randn(2, 3, 4, 4)
    assert torch.equal(loaded(pixels), colour_map(pixels))
    assert loaded.layout() == colour_map.layout() and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    (tmp_path / "none").mkdir()
    LockState(mask={"backbone.w": torch.tensor([True])}).save(tmp_path / "none")
    assert LockState.load(tmp_path / "none", "cpu").colour_map is None
