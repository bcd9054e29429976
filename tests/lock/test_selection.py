"""Tests for hf_encoderlock.lock.selection: candidates, scores, exact top-M/top-N selection, masks, process sync."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from hf_encoderlock.lock.selection import (
    SCORE_FUNCTIONS,
    GradientStats,
    GradMoments,
    accumulate_gradient_stats,
    block_index,
    compute_scores,
    load_mask,
    magnitude_gate_mask,
    mask_stats,
    merge_masks,
    reachable_scores,
    row_scores,
    save_mask,
    select_candidate_parameters,
    select_top_weights,
    sync_gradient_stats,
    sync_mask_across_processes,
    sync_scores,
)


def tiny_vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config)


def tiny_resnet():
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    return ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"))


# ------------------------------------------------------------------------------------------------- candidates


def test_vit_candidates_are_block_weights_and_patch_embedding():
    model = tiny_vit()
    cands = select_candidate_parameters(model)
    params = dict(model.named_parameters())
    linear_or_conv = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))} - {
        "pooler.dense.weight"
    }
    assert set(cands) == linear_or_conv
    assert len(cands) == 13  # 6 Linear weights x 2 blocks + patch projection
    for name, p in cands.items():
        assert p is params[name] and name.endswith(".weight") and p.dim() >= 2
    assert not any(k in n for n in cands for k in ("bias", "norm", "cls_token", "position", "pooler"))
    assert block_index("embeddings.patch_embeddings.projection.weight") == -1
    assert {block_index(n) for n in cands} == {-1, 0, 1}

    only_1 = select_candidate_parameters(model, block_indices=[1])
    assert len(only_1) == 6 and all(n.startswith("layers.1.") for n in only_1)
    assert set(select_candidate_parameters(model, block_indices=[-1])) == {
        "embeddings.patch_embeddings.projection.weight"
    }
    assert len(select_candidate_parameters(model, include_patch_embedding=False)) == 12
    attn = select_candidate_parameters(model, name_patterns=[r"attention\."])
    assert len(attn) == 8
    assert len(select_candidate_parameters(model, module_types=("Conv2d",))) == 1
    assert len(select_candidate_parameters(model, module_types=(nn.Linear,))) == 12
    with_pooler = select_candidate_parameters(model, exclude_patterns=())
    assert "pooler.dense.weight" in with_pooler


def test_candidates_error_when_nothing_matches():
    with pytest.raises(ValueError, match="No candidate parameters"):
        select_candidate_parameters(tiny_vit(), name_patterns=[r"does_not_exist"])
    with pytest.raises(ValueError, match="No candidate parameters"):
        select_candidate_parameters(nn.Sequential(nn.LayerNorm(4)))


def test_resnet_candidates_are_conv_kernels_only():
    model = tiny_resnet()
    cands = select_candidate_parameters(model)
    assert all(n.endswith("convolution.weight") for n in cands)
    assert len(cands) == 6  # stem + 2 + shortcut + 2
    assert not any("normalization" in n for n in cands)
    assert block_index("embedder.embedder.convolution.weight") == -1
    assert {block_index(n) for n in cands} == {-1, 0, 1}  # stem, stage 0, stage 1
    assert len(select_candidate_parameters(model, include_patch_embedding=False)) == 5


def test_custom_module_with_classifier_head_and_tied_weights():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 2)
            self.classifier = nn.Linear(4, 2)
            self.tied = nn.Linear(4, 4)
            self.tied.weight = self.blocks[0].weight

    cands = select_candidate_parameters(Net())
    assert list(cands) == ["stem.weight", "blocks.0.weight", "blocks.1.weight"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("encoder.layer.3.attention.attention.query.weight", 3),  # transformers v4 ViT
        ("layers.0.attention.q_proj.weight", 0),  # transformers 5.x ViT
        ("blocks.11.attn.qkv.weight", 11),  # timm
        ("encoder.layers.2.blocks.1.attention.self.query.weight", 2),  # Swin: outermost = stage
        ("encoder.stages.1.layers.0.layer.1.convolution.weight", 1),
        ("layer3.0.conv1.weight", 3),  # torchvision ResNet
        ("encoder.layers.encoder_layer_4.mlp.0.weight", 4),  # torchvision ViT
        ("vision_model.embeddings.patch_embedding.weight", -1),
        ("patch_embed.proj.weight", -1),
        ("stem.conv.weight", -1),
        ("layernorm.weight", None),
        ("pooler.dense.weight", None),
    ],
)
def test_block_index(name, expected):
    assert block_index(name) == expected


def test_block_pattern_override():
    assert block_index("features.7.weight", block_pattern=r"features\.(\d+)") == 7


# ------------------------------------------------------------------------------------------------- scores


def test_score_functions_on_hand_computed_tensors():
    w = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    p = GradMoments(mean=torch.tensor([[1.0, -4.0], [0.0, 2.0]]), sq_mean=torch.tensor([[1.0, 16.0], [0.0, 8.0]]))
    a = GradMoments(mean=torch.tensor([[-0.5, 2.0], [1.0, 0.0]]), sq_mean=torch.tensor([[0.25, 4.0], [3.0, 0.0]]))
    eps = 1e-8
    assert set(SCORE_FUNCTIONS) == {"gradient_ratio", "fisher_ratio", "taylor", "prohibited_gradient"}
    gr = SCORE_FUNCTIONS["gradient_ratio"](w, p, a, eps)
    torch.testing.assert_close(gr, torch.tensor([[1 / (0.5 + eps), 4 / (2 + eps)], [0.0, 2 / eps]]))
    fr = SCORE_FUNCTIONS["fisher_ratio"](w, p, a, eps)
    torch.testing.assert_close(fr, torch.tensor([[1 / (0.25 + eps), 16 / (4 + eps)], [0.0, 8 / eps]]))
    ty = SCORE_FUNCTIONS["taylor"](w, p, a, eps)
    torch.testing.assert_close(ty, torch.tensor([[2 / (1 + eps), 4 / (2 + eps)], [0.0, 0.0]]))
    pg = SCORE_FUNCTIONS["prohibited_gradient"](w, p, a, eps)
    torch.testing.assert_close(pg, torch.tensor([[1.0, 4.0], [0.0, 2.0]]))


def test_reachable_scores_weigh_each_score_by_the_room_the_update_has_on_the_prohibited_term():
    weight = torch.tensor([[0.0, 0.5, -0.5, 1.0]])
    low, high = torch.full_like(weight, -1.0), torch.tensor([[1.0, 1.0, 1.0, 1.5]])
    stats = GradientStats({"w": torch.tensor([[2.0, -1.0, 4.0, -3.0]])}, {"w": torch.zeros(1, 4)}, num_batches=2)
    scores = {"w": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
    # the update lowers the prohibited term: a positive gradient moves the weight down (room to low), a negative one up
    lowered = reachable_scores(scores, {"w": weight}, stats, {"w": (low, high)})["w"]
    torch.testing.assert_close(lowered, torch.tensor([[1.0 * 1.0, 2.0 * 0.5, 3.0 * 0.5, 4.0 * 0.5]]))
    # the update raises it (the paper's objective): the other way
    raised = reachable_scores(scores, {"w": weight}, stats, {"w": (low, high)}, lowers_prohibited=False)["w"]
    torch.testing.assert_close(raised, torch.tensor([[1.0 * 1.0, 2.0 * 1.5, 3.0 * 1.5, 4.0 * 2.0]]))
    # a weight at its bound in the update's direction has no room, whatever its score
    at_bound = reachable_scores(scores, {"w": high.clone()}, stats, {"w": (low, high)})["w"]
    assert at_bound[0, 1] == 0 and at_bound[0, 3] == 0 and at_bound[0, 0] > 0


def test_accumulate_gradient_stats_matches_manual_gradients_and_leaves_grad_alone():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    unused = nn.Parameter(torch.ones(2, 2))
    lin.weight.requires_grad_(False)  # frozen parameters can still be scored
    xs = [torch.randn(4, 3) for _ in range(3)]
    closures = [lambda x=x: (lin(x) ** 2).sum() for x in xs]
    stats = accumulate_gradient_stats({"w": lin.weight, "u": unused}, closures)
    assert stats.num_batches == 3
    assert lin.weight.requires_grad is False and lin.weight.grad is None and lin.bias.grad is None

    manual = []
    for x in xs:
        w = lin.weight.detach().clone().requires_grad_(True)
        loss = ((x @ w.T + lin.bias.detach()) ** 2).sum()
        manual.append(torch.autograd.grad(loss, w)[0])
    torch.testing.assert_close(stats.grad_sum["w"], sum(manual))
    torch.testing.assert_close(stats.sq_sum["w"], sum(g * g for g in manual))
    mom = stats.moments("w")
    torch.testing.assert_close(mom.mean, sum(manual) / 3)
    assert torch.equal(stats.grad_sum["u"], torch.zeros(2, 2))

    # Paper score: abs of the mean gradient (per-batch gradients averaged before abs).
    stats_a = accumulate_gradient_stats({"w": lin.weight, "u": unused}, closures[:1])
    scores = compute_scores({"w": lin.weight}, stats, stats_a, "gradient_ratio")
    torch.testing.assert_close(scores["w"], (sum(manual) / 3).abs() / (manual[0].abs() + 1e-8))
    with pytest.raises(KeyError):
        compute_scores({"w": lin.weight}, stats, stats_a, "nope")
    with pytest.raises(TypeError):
        accumulate_gradient_stats({"w": lin.weight}, [torch.tensor(1.0)])


# ------------------------------------------------------------------------------------------------- top-M / top-N


def brute_force_select(scores, num_layers, num_weights, existing=None, gate=None, exclude_selected=True):
    """Python loops over every entry: the specification of select_top_weights."""
    names = list(scores)
    eligible = {}
    for name in names:
        flat = scores[name].reshape(-1).tolist()
        g = gate[name].reshape(-1).tolist() if gate is not None else [True] * len(flat)
        e = (
            existing[name].reshape(-1).tolist()
            if (exclude_selected and existing is not None and name in existing)
            else [False] * len(flat)
        )
        eligible[name] = [
            (v, i) for i, v in enumerate(flat) if not math.isnan(v) and v != -math.inf and g[i] and not e[i]
        ]
    ranked = []
    for pos, name in enumerate(names):
        if eligible[name]:
            ranked.append((-max(v for v, _ in eligible[name]), pos))
    ranked.sort()
    chosen = sorted(pos for _, pos in ranked[:num_layers])
    entries = [(-v, pos, i) for pos in chosen for v, i in eligible[names[pos]]]
    entries.sort()
    out = {}
    for _, pos, i in entries[:num_weights]:
        name = names[pos]
        if name not in out:
            out[name] = torch.zeros(scores[name].numel(), dtype=torch.bool)
        out[name][i] = True
    return {n: m.reshape(scores[n].shape) for n, m in out.items()}


def assert_same_mask(a, b):
    assert list(sorted(a)) == list(sorted(b))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def random_scores(gen, discrete=False):
    shapes = {
        "l0.weight": (6, 5),
        "l1.weight": (4, 3, 2, 2),
        "l2.weight": (7,),
        "l3.weight": (3, 9),
        "l4.weight": (2, 2),
    }
    out = {}
    for name, shape in shapes.items():
        s = torch.rand(shape, generator=gen)
        if discrete:
            s = (s * 4).floor()  # many ties
        flat = s.reshape(-1)
        special = torch.randint(0, flat.numel(), (3,), generator=gen)
        flat[special[0]] = float("nan")
        flat[special[1]] = -math.inf
        out[name] = flat.reshape(shape)
    out["l4.weight"].fill_(float("nan"))  # a layer with no eligible entry
    return out


@pytest.mark.parametrize("discrete", [False, True])
def test_select_top_weights_matches_brute_force(discrete):
    gen = torch.Generator().manual_seed(1)
    for trial in range(30):
        scores = random_scores(gen, discrete)
        gate = {n: torch.rand(s.shape, generator=gen) > 0.3 for n, s in scores.items()} if trial % 2 else None
        existing = (
            {n: torch.rand(s.shape, generator=gen) > 0.7 for n, s in list(scores.items())[:3]} if trial % 3 else None
        )
        num_layers = 1 + trial % 5
        num_weights = [1, 3, 10, 25, 200][trial % 5]
        for exclude in (True, False):
            got = select_top_weights(scores, num_layers, num_weights, existing, gate, exclude_selected=exclude)
            want = brute_force_select(scores, num_layers, num_weights, existing, gate, exclude)
            assert_same_mask(got, want)
            total = sum(int(m.sum()) for m in got.values())
            assert total <= num_weights and len(got) <= num_layers
            for name, m in got.items():
                s = scores[name][m]
                assert torch.isfinite(s).all()  # never a NaN / -inf entry
                if gate is not None:
                    assert gate[name][m].all()
                if exclude and existing is not None and name in existing:
                    assert not (existing[name] & m).any()


def test_multi_layer_indices_map_back_to_their_own_layer():
    # The reference applied concatenated indices to every layer; here each layer gets its own entries.
    scores = {
        "a": torch.tensor([[0.0, 9.0], [1.0, 2.0]]),
        "b": torch.tensor([5.0, 8.0, 0.5]),
        "c": torch.tensor([7.0, 0.0]),
    }
    got = select_top_weights(scores, num_layers=2, num_weights=3)
    assert set(got) == {"a", "b"}
    assert torch.equal(got["a"], torch.tensor([[False, True], [False, False]]))
    assert torch.equal(got["b"], torch.tensor([True, True, False]))


def test_magnitude_gate_does_not_shift_indices():
    # The reference compacted gated scores and applied indices to the uncompacted tensor.
    weight = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    scores = {"w": torch.tensor([10.0, 1.0, 9.0, 3.0, 2.0])}
    got = select_top_weights(scores, 1, 2, magnitude_gate=0.5, weights={"w": weight})
    assert got["w"].tolist() == [False, False, False, True, True]
    gate = magnitude_gate_mask({"w": weight}, 0.5)
    assert_same_mask(select_top_weights(scores, 1, 2, magnitude_gate=gate), got)
    with pytest.raises(ValueError):
        select_top_weights(scores, 1, 2, magnitude_gate=0.5)


def test_rounds_add_new_weights_and_fewer_eligible_than_asked():
    scores = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([100.0, -math.inf, float("nan")])}
    r1 = select_top_weights(scores, 1, 1)
    assert set(r1) == {"b"} and int(r1["b"].sum()) == 1
    mask = merge_masks(None, r1)
    r2 = select_top_weights(scores, 1, 5, existing_mask=mask)
    # b has no eligible entry left: a is chosen and all its 6 entries... only 5 asked.
    assert set(r2) == {"a"} and int(r2["a"].sum()) == 5 and not r2["a"][0, 0]
    mask = merge_masks(mask, r2)
    r3 = select_top_weights(scores, 2, 10, existing_mask=mask)
    assert set(r3) == {"a"} and int(r3["a"].sum()) == 1 and r3["a"][0, 0]
    mask = merge_masks(mask, r3)
    assert select_top_weights(scores, 2, 10, existing_mask=mask) == {}
    assert select_top_weights(scores, 0, 10) == {} and select_top_weights(scores, 2, 0) == {}


def test_ties_are_deterministic_and_inf_scores_win():
    scores = {"a": torch.ones(4), "b": torch.ones(4)}
    got = select_top_weights(scores, 2, 3)
    assert got["a"].tolist() == [True, True, True, False] and "b" not in got
    scores = {"a": torch.tensor([1.0, math.inf]), "b": torch.tensor([math.inf, 2.0])}
    got = select_top_weights(scores, 2, 2)
    assert got["a"].tolist() == [False, True] and got["b"].tolist() == [True, False]


# ------------------------------------------------------------------------------------------------- masks


def test_row_scores_rank_whole_rows_by_their_mean_and_keep_vectors():
    scores = {
        "w": torch.tensor([[1.0, 1.0, 1.0], [5.0, 0.0, 0.0], [0.0, float("nan"), 9.0]]),
        "b": torch.tensor([3.0, 1.0]),
    }
    rows = row_scores(scores)
    assert torch.equal(rows["w"], torch.tensor([[1.0] * 3, [5 / 3] * 3, [3.0] * 3]))
    assert torch.equal(rows["b"], scores["b"])
    picked = select_top_weights({"w": rows["w"]}, num_layers=1, num_weights=4)["w"]
    assert picked[2].all() and int(picked[1].sum()) == 1 and not picked[0].any()  # best row whole, then row order


def test_merge_stats_and_safetensors_round_trip(tmp_path):
    model = tiny_vit()
    q = "layers.0.attention.q_proj.weight"
    fc = "layers.1.mlp.fc1.weight"
    m1 = {q: torch.zeros(32, 32, dtype=torch.bool)}
    m1[q][0, :3] = True
    m2 = {q: torch.zeros(32, 32, dtype=torch.bool), fc: torch.zeros(64, 32, dtype=torch.bool)}
    m2[q][0, 2:5] = True
    m2[fc][5, 5] = True
    merged = merge_masks(m1, m2)
    assert int(merged[q].sum()) == 5 and int(merged[fc].sum()) == 1
    assert int(m1[q].sum()) == 3  # inputs untouched

    stats = mask_stats(merged, model)
    total = sum(p.numel() for p in model.parameters())
    cands = sum(p.numel() for p in select_candidate_parameters(model).values())
    assert stats["count"] == 6 and stats["num_parameters"] == total and stats["num_candidates"] == cands
    assert stats["fraction_of_parameters"] == pytest.approx(6 / total)
    assert stats["fraction_of_candidates"] == pytest.approx(6 / cands)
    assert stats["per_layer"] == {q: 5, fc: 1} and stats["num_layers"] == 2
    with pytest.raises(KeyError):
        mask_stats({"nope": torch.ones(1, dtype=torch.bool)}, model)

    path = tmp_path / "mask.safetensors"
    save_mask(merged, path)
    loaded = load_mask(path)
    assert all(t.dtype == torch.bool for t in loaded.values())
    assert_same_mask(loaded, merged)
    save_mask({}, tmp_path / "empty.safetensors")
    assert load_mask(tmp_path / "empty.safetensors") == {}


def test_sync_functions_are_noops_without_distributed():
    assert not torch.distributed.is_initialized()
    scores = {"a": torch.rand(3)}
    assert sync_scores(scores)["a"] is scores["a"]
    stats = GradientStats({"a": torch.ones(2)}, {"a": torch.ones(2)}, 1)
    assert sync_gradient_stats(stats) is stats
    mask = {"a": torch.tensor([True, False])}
    assert sync_mask_across_processes(mask)["a"] is mask["a"]


# ------------------------------------------------------------------------------------------------- two processes


def _sync_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        gen = torch.Generator().manual_seed(100 + rank)  # different local data per rank
        names = ["x.weight", "y.weight", "z.weight"]
        local = {n: torch.rand(8, 4, generator=gen) for n in names}
        local_mask = select_top_weights(local, 1 + rank, 5)  # differs across ranks (even its layers)

        synced = sync_scores(local)
        mask = select_top_weights(synced, 2, 7)
        broadcast = sync_mask_across_processes(local_mask)

        stats = GradientStats(
            {n: local[n].clone() for n in names}, {n: local[n] ** 2 for n in names}, num_batches=rank + 1
        )
        stats = sync_gradient_stats(stats)
        torch.save(
            {
                "local": local,
                "local_mask": local_mask,
                "synced": synced,
                "mask": mask,
                "broadcast": broadcast,
                "stats": (stats.grad_sum, stats.sq_sum, stats.num_batches),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_sync_gives_identical_masks(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    mp.start_processes(
        _sync_worker,
        args=(world, str(tmp_path / "rendezvous"), str(tmp_path)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world))
    assert not all(torch.equal(r0["local"][n], r1["local"][n]) for n in r0["local"])
    # Unsynced selections differ; synced ones agree.
    assert r0["local_mask"].keys() != r1["local_mask"].keys() or any(
        not torch.equal(r0["local_mask"][n], r1["local_mask"][n]) for n in r0["local_mask"]
    )
    mean = {n: (r0["local"][n] + r1["local"][n]) / 2 for n in r0["local"]}
    for n in mean:
        torch.testing.assert_close(r0["synced"][n], mean[n])
        assert torch.equal(r0["synced"][n], r1["synced"][n])
    assert_same_mask(r0["mask"], r1["mask"])
    assert_same_mask(r0["mask"], select_top_weights(r0["synced"], 2, 7))
    assert sum(int(m.sum()) for m in r0["mask"].values()) == 7
    assert_same_mask(r0["broadcast"], r0["local_mask"])
    assert_same_mask(r1["broadcast"], r0["local_mask"])
    g0, s0, c0 = r0["stats"]
    g1, s1, c1 = r1["stats"]
    assert c0 == c1 == 3
    for n in g0:
        assert torch.equal(g0[n], g1[n]) and torch.equal(s0[n], s1[n])
        torch.testing.assert_close(g0[n], r0["local"][n] + r1["local"][n])
