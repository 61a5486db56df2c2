"""Accuracy with its count, a 95% Wilson interval and McNemar's paired test (effvit_deploy.evaluation)."""
import math

import pytest

from effvit_deploy.evaluation import MIN_IMAGES, Top1, mcnemar, top1_text, wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    from scipy.stats import binomtest

    for correct, images in ((81, 263), (3, 500), (997, 1000)):
        reference = binomtest(correct, images).proportion_ci(method="wilson")
        assert wilson_interval(correct, images) == pytest.approx((reference.low, reference.high), abs=1e-9)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(900, 1000)
    assert hi - lo < 0.04 and lo < 0.9 < hi  # one standard error ~0.0095 at n = 1,000 near 0.9


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match="correct"):
        wilson_interval(5, 0)
    with pytest.raises(ValueError, match="correct"):
        wilson_interval(11, 10)


def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_binomial_p():
    a = [True] * 10 + [False] * 2 + [True] * 50
    b = [False] * 10 + [True] * 2 + [True] * 50
    test = mcnemar(a, b)
    assert (test["a_only"], test["b_only"], test["images"]) == (10, 2, 62)
    expected = 2 * sum(math.comb(12, k) for k in range(0, 3)) / 2 ** 12
    assert test["p_value"] == pytest.approx(expected)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        mcnemar([True], [True, False])


def test_every_accuracy_text_carries_its_image_count_and_flags_small_sets():
    result = Top1([True] * 912 + [False] * 88)
    assert result.images == 1000 and result.top1 == pytest.approx(0.912)
    assert result.text.startswith("0.912 [") and "on 1,000 images" in result.text
    small = top1_text(0.5, MIN_IMAGES - 1)
    assert f"on {MIN_IMAGES - 1} images" in small and "not for decisions" in small
    assert result.as_dict()["images"] == 1000 and len(result.as_dict()["ci95"]) == 2
