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


def test_top1_of_logits_counts_top1_and_top5_and_refuses_non_finite_logits():
    import numpy as np

    from effvit_deploy.evaluation import NonFiniteLogits, top1_of_logits

    logits = np.tile(np.arange(7, dtype=np.float32), (4, 1))  # class 6 largest, class 0 smallest
    logits[0, 3] = 9.0
    result = top1_of_logits(logits, np.array([3, 6, 1, 2]))  # right, right, 6th largest, 5th largest
    assert result.correct == [True, True, False, False] and result.top1 == 0.5 and result.images == 4
    assert result.top5 == 0.75
    assert top1_of_logits(np.zeros((1, 3)), np.array([0])).top1 == 1.0  # a tie goes to the lowest class
    logits[2, 4] = np.nan
    with pytest.raises(NonFiniteLogits, match="NaN"):
        top1_of_logits(logits, np.array([3, 1, 5, 2]))
    with pytest.raises(ValueError, match="no image"):
        top1_of_logits(np.zeros((0, 7)), np.zeros(0, int))


def test_demo_export_and_bench_report_the_top1_of_counting_argmax_over_the_subset(tmp_path):
    """The three paths that print a validation top-1 give exactly the figure of a count made here
    over the same subset images, for the same limit."""
    import torch

    from conftest import make_tiny_run
    from effvit_deploy.bench.accuracy import measure_accuracy
    from effvit_deploy.data.subset import validation_subset
    from effvit_deploy.demo.predict import load_variant, validation_accuracy
    from effvit_deploy.export.verify import build_reference, check_accuracy
    from effvit_deploy.runs import load_model_card, load_run

    run = make_tiny_run(tmp_path / "run", "exact")
    card, (model, _) = load_model_card(run), load_run(run)
    variant = load_variant(run, "torch")
    limit = 120  # of 359: every third image (data.subset)
    subset = validation_subset(card, limit)
    items = [subset[i] for i in range(len(subset))]
    with torch.no_grad():
        logits = model(torch.stack([image for image, _ in items]))
    expected = (int((logits.argmax(1) == torch.tensor([label for _, label in items])).sum()), len(items))

    demo = validation_accuracy(variant, "torch", limit)
    reference = build_reference(model, card, [(card.img_size, card.img_size)], card.img_size, limit)
    export = check_accuracy(lambda x: model(torch.from_numpy(x)).detach().numpy(), reference)
    bench = measure_accuracy(variant.runners["torch"], card, limit)
    for top1, images in (demo, (export["top1"], export["n"]), (reference.val_top1, export["n"]), (bench.top1, bench.images)):
        assert (round(top1 * images), images) == expected and top1 == expected[0] / expected[1]
    assert 0 < expected[0] < expected[1]  # a count that could go wrong either way
