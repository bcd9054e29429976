"""The verdict on a prohibited domain (hf_encoderlock.probing.lock_report): holds, fails, not measurable."""


def test_verdict_says_holds_fails_or_not_measurable():
    from hf_encoderlock.probing.lock_report import prohibited_verdict

    row = {"victim": 0.72, "random_twin": 0.24, "locked": 0.26, "advantage_removed": (0.72 - 0.26) / (0.72 - 0.24)}
    assert prohibited_verdict(row).startswith("lock holds: 96%")
    assert prohibited_verdict({**row, "locked": 0.6, "advantage_removed": 0.25}).startswith("lock does NOT hold")
    noise = {"victim": 0.960, "random_twin": 0.951, "locked": 0.94, "advantage_removed": 2.33}  # 0.9-point advantage
    assert prohibited_verdict(noise).startswith("not measurable")
