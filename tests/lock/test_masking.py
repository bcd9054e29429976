"""Tests for hf_encoderlock.lock.masking: only selected entries ever change, under AdamW with every complication."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_encoderlock.lock.masking import MaskedParameterGuard, bit_view, changed_entries, snapshot_state
from hf_encoderlock.lock.selection import (
    accumulate_gradient_stats,
    compute_scores,
    merge_masks,
    select_candidate_parameters,
    select_top_weights,
)


def tiny_vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config)


def changed_positions(before: dict, model: nn.Module) -> dict:
    """name -> bool tensor of bitwise-changed entries (parameters and buffers)."""
    after = model.state_dict()
    return {n: bit_view(before[n]) != bit_view(after[n]) for n in before}


def assert_exactly_mask_changed(before: dict, model: nn.Module, mask: dict) -> None:
    diff = changed_positions(before, model)
    for name, changed in diff.items():
        if name in mask:
            msg = f"{name}: {int(changed.sum())} changed, {int(mask[name].sum())} selected"
            assert torch.equal(changed, mask[name]), msg
        else:
            assert not changed.any(), f"{name} changed but has no selected entry"
    counts = changed_entries(before, model)
    assert sum(counts.values()) == sum(int(m.sum()) for m in mask.values())


def select_round(model, guard, existing, num_layers, num_weights, seed):
    """One real selection round: gradient-ratio scores from two synthetic domains."""
    cands = select_candidate_parameters(model)
    gen = torch.Generator().manual_seed(seed)
    auth = [torch.randn(4, 3, 16, 16, generator=gen) for _ in range(2)]
    proh = [torch.rand(4, 3, 16, 16, generator=gen) * 3 for _ in range(2)]

    def loss_of(x):
        return lambda: model(pixel_values=x).last_hidden_state[:, 0].pow(2).mean()

    ctx = guard.suspended() if guard is not None else torch.enable_grad()
    with ctx:
        stats_p = accumulate_gradient_stats(cands, [loss_of(x) for x in proh])
        stats_a = accumulate_gradient_stats(cands, [loss_of(x) for x in auth])
    scores = compute_scores(cands, stats_p, stats_a, "gradient_ratio")
    return select_top_weights(scores, num_layers, num_weights, existing_mask=existing)


def train_steps(model, optimizer, guard, steps, seed, accumulation=2, autocast=False):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for _ in range(accumulation):
            x = torch.randn(4, 3, 16, 16, generator=gen)
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(pixel_values=x).last_hidden_state
            else:
                out = model(pixel_values=x).last_hidden_state
            loss = (out.float() - 1.0).pow(2).mean() / accumulation
            loss.backward()
        guard.mask_gradients()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm=0.5)
        optimizer.step()
        guard.restore_unselected()
        optimizer.zero_grad()


def test_only_selected_entries_change_under_adamw_with_mask_growth_clipping_accumulation_and_bf16():
    model = tiny_vit()
    model.train()
    # Optimizer over every parameter, built before the guard (as a Trainer would), weight decay on everything.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    start = snapshot_state(model)

    mask = select_round(model, None, None, num_layers=3, num_weights=40, seed=1)
    assert len(mask) >= 2 and sum(int(m.sum()) for m in mask.values()) == 40
    guard = MaskedParameterGuard(model, mask)
    assert guard.missing_from(optimizer) == []

    train_steps(model, optimizer, guard, steps=3, seed=10)
    assert_exactly_mask_changed(start, model, mask)
    # Gradients were masked during backward: Adam moments of unselected entries never saw a gradient.
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        state = optimizer.state[params[name]]
        assert not state["exp_avg"][~keep].any() and not state["exp_avg_sq"][~keep].any()
        assert state["exp_avg"][keep].ne(0).all()
    assert all(not optimizer.state[p] for n, p in params.items() if n not in mask)

    # Round 2: 30 new entries in other layers too; the SAME optimizer (Adam moments carried over).
    new = select_round(model, guard, mask, num_layers=4, num_weights=30, seed=2)
    assert sum(int(m.sum()) for m in new.values()) == 30
    assert not any((new[n] & mask[n]).any() for n in new if n in mask)
    mask = merge_masks(mask, new)
    assert len(mask) > 2
    guard.install(mask)
    assert guard.missing_from(optimizer) == []
    train_steps(model, optimizer, guard, steps=2, seed=11)
    train_steps(model, optimizer, guard, steps=2, seed=12, autocast=True)
    assert_exactly_mask_changed(start, model, mask)
    assert sum(changed_entries(start, model).values()) == 70

    guard.remove()
    assert all(p.requires_grad for p in model.parameters())


def test_zeroing_gradients_alone_is_not_enough():
    """The failure the guard prevents: AdamW weight decay moves zero-gradient entries of a masked tensor."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[0, :3] = True
    optimizer = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=0.1)
    before = snapshot_state(lin)
    for _ in range(2):
        lin(torch.randn(4, 8)).pow(2).sum().backward()
        lin.weight.grad.mul_(keep)
        lin.bias.grad = None
        optimizer.step()
        optimizer.zero_grad()
    assert changed_entries(before, lin)["weight"] > 3


def test_fully_selected_parameters_and_frozen_optimizer_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    # Warm up every parameter's Adam moments first: frozen ones must not move afterwards despite their state.
    net(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # stale zero gradients left on every parameter
    before = snapshot_state(net)
    mask = {"0.weight": torch.ones(6, 4, dtype=torch.bool), "2.weight": torch.zeros(2, 6, dtype=torch.bool)}
    mask["2.weight"][1, 4] = True
    with MaskedParameterGuard(net, mask) as guard:
        assert guard.fully_selected == ["0.weight"] and guard.partly_selected == ["2.weight"]
        assert not net[0].bias.requires_grad and net[1].weight.grad is None
        for _ in range(3):
            net(torch.randn(3, 4)).pow(2).sum().backward()
            guard.step(optimizer)
            optimizer.zero_grad(set_to_none=False)
    assert_exactly_mask_changed(before, net, mask)
    assert all(p.requires_grad for p in net.parameters())


def test_non_freezing_mode_for_ddp_keeps_requires_grad_and_drops_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    before = snapshot_state(net)
    mask = {"1.weight": torch.zeros(2, 6, dtype=torch.bool)}
    mask["1.weight"][0, ::2] = True
    guard = MaskedParameterGuard(net, mask, freeze_unselected=False)
    assert all(p.requires_grad for p in net.parameters())
    for _ in range(3):
        net(torch.randn(3, 4)).pow(2).sum().backward()
        assert torch.equal(net[0].weight.grad, torch.zeros(6, 4))  # zeroed by the hook, still produced
        guard.mask_gradients()
        assert net[0].weight.grad is None
        optimizer.step()
        guard.restore_unselected()
        optimizer.zero_grad()
    assert_exactly_mask_changed(before, net, mask)


def test_suspended_hooks_let_scoring_see_true_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    closures = [lambda: lin(x).pow(2).sum()]
    reference = accumulate_gradient_stats({"weight": lin.weight}, closures).grad_sum["weight"]
    mask = {"weight": torch.zeros(3, 5, dtype=torch.bool)}
    mask["weight"][0, 0] = True
    guard = MaskedParameterGuard(lin, mask)
    masked = accumulate_gradient_stats({"weight": lin.weight}, closures).grad_sum["weight"]
    assert int((masked != 0).sum()) == 1
    with guard.suspended():
        assert torch.equal(accumulate_gradient_stats({"weight": lin.weight}, closures).grad_sum["weight"], reference)
        assert not lin.bias.requires_grad  # scoring does not unfreeze anything else
    lin(x).sum().backward()  # hooks active again
    assert int((lin.weight.grad != 0).sum()) == 1


def test_install_validates_and_reports_missing_optimizer_params():
    lin = nn.Linear(2, 2)
    with pytest.raises(KeyError):
        MaskedParameterGuard(lin, {"nope": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError):
        MaskedParameterGuard(lin, {"weight": torch.ones(3, dtype=torch.bool)})
    lin.bias.requires_grad_(False)
    optimizer = torch.optim.SGD([lin.weight], lr=0.1)
    guard = MaskedParameterGuard(lin, {"bias": torch.tensor([True, False])})
    assert guard.missing_from(optimizer) == ["bias"]
    guard.remove()
    assert lin.weight.requires_grad and not lin.bias.requires_grad


def test_changed_entries_is_bitwise():
    before = {"a": torch.tensor([0.0, float("nan"), 1.0]), "b": torch.zeros(2)}
    after = {"a": torch.tensor([-0.0, float("nan"), 1.0]), "b": torch.zeros(2)}
    assert changed_entries(before, after) == {"a": 1}
    assert changed_entries(before, after, include_unchanged=True) == {"a": 1, "b": 0}
    with pytest.raises(ValueError):
        changed_entries(before, {"a": torch.zeros(2), "b": torch.zeros(2)})


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import os

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
        ddp = nn.parallel.DistributedDataParallel(net)
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
        before = snapshot_state(net)
        mask = {"2.weight": torch.zeros(2, 6, dtype=torch.bool)}
        mask["2.weight"][0, ::2] = True
        guard = MaskedParameterGuard(net, mask, freeze_unselected=False)
        gen = torch.Generator().manual_seed(rank)  # different data per rank
        for step in range(4):
            if step == 2:  # the mask grows mid-run, into a previously unselected parameter
                grown = {"0.weight": torch.zeros(6, 4, dtype=torch.bool), **mask}
                grown["0.weight"][3, 1] = True
                mask = grown
                guard.install(mask)
            ddp(torch.randn(3, 4, generator=gen)).pow(2).sum().backward()
            guard.mask_gradients()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            optimizer.step()
            guard.restore_unselected()
            optimizer.zero_grad()
        torch.save(
            {"before": before, "after": snapshot_state(net), "mask": mask}, os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_exact_and_identical(tmp_path):
    """Under DDP (gloo, 2 ranks, different data) with freeze_unselected=False: exact updates, identical ranks."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for name in r0["after"]:
        assert torch.equal(r0["after"][name], r1["after"][name]), name
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    model.load_state_dict(r0["after"])
    assert_exactly_mask_changed(r0["before"], model, r0["mask"])
