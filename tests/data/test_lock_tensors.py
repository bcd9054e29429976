"""Lock tensors (hf_encoderlock.data.lock_tensors): several authorized domains combined into one labelled set."""

import pytest
import torch

from hf_encoderlock.data.lock_tensors import (
    DomainTensors,
    LockDataError,
    PairedDomainCollator,
    PairedDomainDataset,
    one_view_rows,
    stratified_split,
)
from tests.helpers import toy_domain


def test_combined_authorized_domains_keep_each_domains_classes_apart():
    from hf_encoderlock.data.lock_tensors import combine_labelled_domains

    combined = combine_labelled_domains(
        {"red": toy_domain(6, 0, "red"), "green": toy_domain(4, 1, "green", num_classes=2)}
    )
    assert combined.features["label"].names == ["red/c0", "red/c1", "red/c2", "green/c0", "green/c1"]
    assert combined["label"] == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    single = toy_domain(5, 0, "red")
    assert combine_labelled_domains({"red": single}) is single


def test_preprocessed_domains_carry_content_hashes_through_subsets_and_splits():
    import torch

    from hf_encoderlock.data.lock_tensors import HASH_BYTES, image_content_hash, preprocess_domain, stratified_split
    from hf_encoderlock.encoders import tiny_vit_encoder

    red = toy_domain(12, 0, "red")
    data = preprocess_domain(tiny_vit_encoder(seed=0, image_size=16, patch_size=4), red, "red")
    assert data.content_hashes.shape == (12, HASH_BYTES) and data.content_hashes.dtype == torch.uint8
    assert bytes(data.content_hashes[5].tolist()) == image_content_hash(red[5]["image"])
    part = data.subset(torch.tensor([5, 2]))
    assert torch.equal(part.content_hashes, data.content_hashes[[5, 2]])
    kept, held = stratified_split(data, 0.25, seed=0)
    assert len(kept.content_hashes) + len(held.content_hashes) == 12


def _numbered_rows(n: int, first: int) -> DomainTensors:
    """``n`` one-pixel 'images' whose pixel is their row number plus ``first``."""
    return DomainTensors("rows", torch.arange(first, first + n).float()[:, None], torch.zeros(n, dtype=torch.long), 1)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_collated_batches_hold_factor_times_more_distinct_prohibited_images(factor):
    authorized, prohibited = _numbered_rows(24, 0), _numbered_rows(24, 100)
    dataset = PairedDomainDataset(authorized, prohibited, seed=0)
    collate = PairedDomainCollator(authorized, prohibited, prohibited_per_authorized=factor)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1)).tolist()  # as a random sampler
    size = 4 * factor
    for start in range(0, len(order) - size + 1, size):
        batch = collate([dataset[i] for i in order[start : start + size]])
        a_rows = batch["authorized_pixel_values"][:, 0].long().tolist()
        p_rows = batch["prohibited_pixel_values"][:, 0].long().tolist()
        assert len(a_rows) == 4 and len(p_rows) == 4 * factor
        assert len(set(p_rows)) == len(p_rows)  # no prohibited image twice in a batch
        assert batch["authorized_index"].tolist() == a_rows  # the rows the reference cache reads
        assert torch.equal(batch["authorized_labels"], authorized.labels[batch["authorized_index"]])


def _viewed_rows(images: int, views: int) -> DomainTensors:
    """``views`` blocks of ``images`` one-pixel rows: pixel ``1000 * view + image``, label ``image % 3``."""
    pixels = torch.cat([1000 * view + torch.arange(images) for view in range(views)]).float()[:, None]
    return DomainTensors("rows", pixels, (torch.arange(images) % 3).repeat(views), 3)


def test_a_split_by_views_keeps_every_view_of_an_image_in_one_part_in_view_blocks():
    kept, held = stratified_split(_viewed_rows(30, 3), 0.2, seed=0, views=3)
    for part in (kept, held):
        pixels = part.pixel_values[:, 0].long()
        images = len(part) // 3
        assert len(part) == 3 * images
        blocks = pixels.view(3, images)
        assert torch.equal(blocks // 1000, torch.arange(3)[:, None].expand(3, images))  # view-major
        assert torch.equal(blocks % 1000, (blocks[0] % 1000).expand(3, images))  # the same images in each block
    kept_images, held_images = ({int(p) % 1000 for p in part.pixel_values[:, 0]} for part in (kept, held))
    assert not kept_images & held_images
    assert len(held) == 3 * 6  # 20% of the 30 images, stratified as without views
    with pytest.raises(LockDataError, match="not 4 blocks"):
        stratified_split(_viewed_rows(30, 3), 0.2, seed=0, views=4)


def test_one_view_rows_show_each_drawn_image_once_under_the_view():
    rows = torch.tensor([0, 12, 25, 2, 15])  # 10 images x 3 views: 2 and 12 are one image, so are 25 and 15
    assert one_view_rows(rows, 3, 30, 1).tolist() == [10, 12, 15]
    assert one_view_rows(rows, 3, 30, 0).tolist() == [0, 2, 5]


def test_collated_batches_show_one_view_of_their_prohibited_images():
    authorized, prohibited = _numbered_rows(40, 0), _viewed_rows(20, 4)
    dataset = PairedDomainDataset(authorized, prohibited, seed=0)
    collate = PairedDomainCollator(authorized, prohibited, prohibited_views=4, seed=3)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1)).tolist()
    seen_views = set()
    for start in range(0, len(order) - 8 + 1, 8):
        items = [dataset[i] for i in order[start : start + 8]]
        pixels = collate(items)["prohibited_pixel_values"][:, 0].long()
        drawn = {int(prohibited.pixel_values[item["prohibited_index"], 0]) % 1000 for item in items}
        assert len(set((pixels // 1000).tolist())) == 1  # one view per batch
        assert set((pixels % 1000).tolist()) == drawn and len(pixels) == len(drawn)  # the drawn images, each once
        seen_views.add(int(pixels[0]) // 1000)
        again = collate(items)["prohibited_pixel_values"]
        assert torch.equal(again[:, 0].long(), pixels)  # the view depends on the batch and the seed alone
    assert seen_views == {0, 1, 2, 3}
