"""Lock tensors (hf_encoderlock.data.lock_tensors): several authorized domains combined into one labelled set."""

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
