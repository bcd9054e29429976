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
