"""The verdict on a prohibited domain (hf_encoderlock.probing.lock_report): holds, fails, not measurable."""


def test_verdict_says_holds_fails_or_not_measurable():
    from hf_encoderlock.probing.lock_report import prohibited_verdict

    row = {"victim": 0.72, "random_twin": 0.24, "locked": 0.26, "advantage_removed": (0.72 - 0.26) / (0.72 - 0.24)}
    assert prohibited_verdict(row).startswith("lock holds against fresh probes: 96%")
    failed = prohibited_verdict({**row, "locked": 0.6, "advantage_removed": 0.25})
    assert failed.startswith("lock does NOT hold") and "no adaptive attacker ran" in failed
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


def test_markdown_shows_no_ratio_where_the_advantage_is_within_noise():
    from hf_encoderlock.probing.lock_report import lock_report_markdown

    rows = [
        {"domain": "digits", "role": None, "random_twin": 0.955, "victim": 0.961, "locked": 0.935,
         "advantage_removed": 4.0, "advantage_kept": -3.0},
        {"domain": "mnist-m", "role": "prohibited", "random_twin": 0.253, "victim": 0.719, "locked": 0.262,
         "advantage_removed": 0.981},
    ]  # fmt: skip
    lock = {"variant": "supervised", "objective": "information", "mask": {"count": 1, "num_parameters": 10,
            "fraction": 0.1}, "rounds_completed": 1}  # fmt: skip
    text = lock_report_markdown({"authorized": ["mnist"], "prohibited": ["mnist-m"], "fraction": 1.0, "table": rows,
                                 "verdict": {}, "lock": lock, "timings": {}})  # fmt: skip
    assert "400.0%" not in text and "-300.0%" not in text
    assert "Not run (`adaptive_attacks` was off): the figures above are fresh probes only" in text  # no adaptive
    assert "| digits | other | 95.5% | 96.1% | 93.5% | - | within noise | within noise |" in text
    assert "98.1%" in text


def test_verdict_looks_at_the_authorized_side_too():
    from hf_encoderlock.probing.lock_report import authorized_verdict

    row = {"victim": 0.80, "random_twin": 0.30, "locked": 0.565, "advantage_kept": 0.53}
    assert authorized_verdict(row).startswith("authorized use DAMAGED: only 53%")
    assert authorized_verdict({**row, "locked": 0.79, "advantage_kept": 0.98}).startswith("authorized use kept: 98%")
    noise = {"victim": 0.961, "random_twin": 0.955, "locked": 0.935, "advantage_kept": -3.0}
    assert authorized_verdict(noise).startswith("not measurable")


def test_removal_above_100_percent_is_said_in_words_and_the_noise_floor_is_stated():
    from hf_encoderlock.probing.lock_report import authorized_verdict, lock_report_markdown, prohibited_verdict

    below = {"victim": 0.385, "random_twin": 0.109, "locked": 0.094, "advantage_removed": (0.385 - 0.094) / 0.276}
    text = prohibited_verdict(below)
    assert text.startswith("lock holds against fresh probes: 105%")
    assert "fall below the random-init twin, 10.9%" in text and "9.4%" in text
    near = {"victim": 0.72, "random_twin": 0.24, "locked": 0.26, "advantage_removed": 0.96}
    assert "below the random-init twin" not in prohibited_verdict(near)
    for verdict, key in ((prohibited_verdict, "advantage_removed"), (authorized_verdict, "advantage_kept")):
        noise = {"victim": 0.961, "random_twin": 0.955, "locked": 0.935, key: 4.0}  # alike on both sides
        assert "0.6 points, under the 3-point noise floor" in verdict(noise)
        # a victim far below its twin is no noise (found on the user's path: "-75.0 points, under the noise floor")
        below_twin = {"victim": 0.125, "random_twin": 0.875, "locked": 0.0, key: 1.0}
        text = verdict(below_twin)
        assert "the victim is below its random-init twin" in text and "-75.0 points" in text
        assert "noise floor" not in text
    lock = {"variant": "supervised", "objective": "information", "mask": {"count": 1, "num_parameters": 10,
            "fraction": 0.1}, "rounds_completed": 1}  # fmt: skip
    table = [{"domain": "letters", "role": "prohibited", **below}]
    markdown = lock_report_markdown({"authorized": ["mnist"], "prohibited": ["letters"], "fraction": 1.0,
                                     "table": table, "verdict": {}, "lock": lock, "timings": {}})  # fmt: skip
    assert "| 105.4% (below the twin) |" in markdown
