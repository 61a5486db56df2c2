"""The demo's in-distribution examples are the served runs' own validation images, one per class,
chosen without looking at any answer; on the committed study, exact gets every one right."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import make_tiny_run
from effvit_deploy.data import ClutteredDigits
from effvit_deploy.data.subset import validation_subset
from effvit_deploy.demo.app import describe_training
from effvit_deploy.demo.examples import first_of_each_class, validation_examples
from effvit_deploy.runs import load_model_card

STUDY = Path(__file__).parent.parent / "benchmarks" / "results" / "cluttered_study" / "study.json"


def test_first_of_each_class_follows_the_given_order():
    assert first_of_each_class([3, 3, 1, 2, 1, 0], [0, 1, 2, 3, 4, 5], 3) == [0, 2, 3]
    assert first_of_each_class([3, 3, 1, 2, 1, 0], [5, 4, 3], 9) == [5, 4, 3]


def test_in_distribution_examples_are_validation_images_at_the_run_resolution(tmp_path):
    card = load_model_card(make_tiny_run(tmp_path / "run", "exact"))
    card = replace(card, img_size=64, data={"name": "cluttered", "train_size": 8, "val_size": 40, "seed": 0})
    examples = validation_examples(card, tmp_path / "examples", count=4)
    val = ClutteredDigits("val", 40, 64)
    subset_indices = validation_subset(card, None).indices
    assert len(examples) == 4 and len({val.label(i) for i, _, _ in examples}) == 4
    for index, path, caption in examples:
        assert index in subset_indices and f"true label {val.label(index)}" in caption
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(val.image(index)))
    again = validation_examples(card, tmp_path / "examples", count=4)
    assert again == examples  # reused, deterministic


def test_the_page_says_what_the_models_were_trained_on_with_counted_accuracy(tmp_path):
    from effvit_deploy.demo import load_variants

    run = make_tiny_run(tmp_path / "run", "exact", top1=0.9)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "top1": 0.9, "val_images": 1000}) + "\n")
    text = describe_training(load_variants([run], "torch"))
    assert "**Trained on**" in text and "out of distribution" in text
    assert "top-1 0.900 [0.880, 0.917] on 1,000 images" in text


def test_exact_classifies_the_demo_examples_of_the_committed_study_correctly():
    """The study records, per demo example (validation index), whether each run's evaluation got
    it right; exact must get all of them right."""
    study = json.loads(STUDY.read_text())
    examples = study["demo_examples"]
    assert len(examples) >= 3
    exact = next(r["run"] for r in study["rows"] if r["attention"] == "exact")
    assert all(e["correct"][exact] for e in examples), [(e["caption"], e["correct"]) for e in examples]
