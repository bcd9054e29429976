"""The verdict on a prohibited domain (hf_encoderlock.probing.lock_report): holds, fails, not measurable."""


def test_verdict_says_holds_fails_or_not_measurable():
    from hf_encoderlock.probing.lock_report import prohibited_verdict

    row = {"victim": 0.72, "random_twin": 0.24, "locked": 0.26, "advantage_removed": (0.72 - 0.26) / (0.72 - 0.24)}
    assert prohibited_verdict(row).startswith("lock holds against fresh probes: 96%")
    assert prohibited_verdict({**row, "locked": 0.6, "advantage_removed": 0.25}).startswith("lock does NOT hold")
    noise = {"victim": 0.960, "random_twin": 0.951, "locked": 0.94, "advantage_removed": 2.33}  # 0.9-point advantage
    assert prohibited_verdict(noise).startswith("not measurable")


def test_verdict_judges_by_the_worst_case_of_the_adaptive_attacker():
    from hf_encoderlock.probing.lock_report import prohibited_verdict

    row = {"victim": 0.72, "random_twin": 0.24, "locked": 0.26, "advantage_removed": (0.72 - 0.26) / (0.72 - 0.24)}
    broken = {**row, "adaptive_worst": 0.72, "adaptive_removed": 0.0, "adaptive_attack": "sanitize: reset_outliers 6"}
    text = prohibited_verdict(broken)
    assert text.startswith("lock does NOT hold") and "reset_outliers 6" in text and "96% under fresh probes" in text
    held = {**row, "adaptive_worst": 0.27, "adaptive_removed": 0.94, "adaptive_attack": "transform: greyscale 1"}
    assert prohibited_verdict(held).startswith("lock holds: an attacker who knows the method")
