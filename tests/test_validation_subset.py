"""One validation subset: export, bench, demo and the approximation table score the same images."""
from __future__ import annotations


from conftest import make_tiny_run
from effvit_deploy.data import subset
from effvit_deploy.data.subset import subset_files, subset_indices
from effvit_deploy.runs import load_model_card


def test_subset_indices_are_evenly_spaced_and_distinct():
    assert subset_indices(10, 5) == [0, 2, 4, 6, 8]
    assert subset_indices(7, 3) == [0, 2, 4]
    assert subset_indices(5, None) == subset_indices(5, 0) == subset_indices(5, 9) == [0, 1, 2, 3, 4]
    assert len(set(subset_indices(1000, 333))) == 333


def test_export_bench_demo_and_approximation_score_the_same_files(tmp_path, monkeypatch):
    from effvit_deploy.approximation import validation_images
    from effvit_deploy.bench.accuracy import measure_accuracy
    from effvit_deploy.demo.predict import load_variant, validation_accuracy
    from effvit_deploy.export.verify import load_validation

    run = make_tiny_run(tmp_path / "run", "exact")
    card = load_model_card(run)
    calls: dict[str, list[str]] = {}
    real = subset.validation_subset

    def spy(stage):
        def record(*args, **kwargs):
            result = real(*args, **kwargs)
            calls[stage] = subset_files(result)
            return result
        return record

    limit = 12
    monkeypatch.setattr(subset, "validation_subset", spy("export"))
    load_validation(card, limit, card.img_size)
    variant = load_variant(run, "torch")
    monkeypatch.setattr(subset, "validation_subset", spy("bench"))
    measure_accuracy(variant.runners["torch"], card, limit)
    monkeypatch.setattr(subset, "validation_subset", spy("demo"))
    top1, n = validation_accuracy(variant, "torch", limit)
    monkeypatch.setattr(subset, "validation_subset", spy("approximation"))
    validation_images(card.data, card, card.img_size, limit)
    assert len(calls["export"]) == limit and n == limit and 0.0 <= top1 <= 1.0
    assert calls["export"] == calls["bench"] == calls["demo"] == calls["approximation"]


def test_folder_subsets_name_their_files(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    card = load_model_card(make_tiny_run(tmp_path / "run", "exact"))
    card.data = {"name": "folder", "root": str(tmp_path)}
    files = subset_files(subset.validation_subset(card, 4))
    assert [f.split("/")[-2:] for f in files] == [["a", "0.png"], ["a", "2.png"], ["b", "0.png"], ["b", "2.png"]]
