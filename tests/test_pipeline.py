"""The main job reuses what is built only while its inputs and options are unchanged."""
import json

import pytest

from effvit_deploy import pipeline

RECIPE = """
model: vit_tiny_patch16_224
img_size: 32
model_kwargs: {depth: 2, embed_dim: 64, num_heads: 2, patch_size: 8, pretrained_cfg_overlay: {crop_pct: 1.0}}
attention_kwargs: {linformer: {proj_len: 8}}
data: {name: cluttered, train_size: 32, val_size: 16}
epochs: 1
batch_size: 16
num_workers: 0
threads: 1
device: cpu
log_interval: 100
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE)
    source = pipeline.train_current(recipe, "exact", root / "runs", [], redo=False)
    study = pipeline.Study(root / "runs", False, [32, 64], [32, 48], recipe, recipe, eval_limit=16, bench_limit=8)
    return root, recipe, source, study


def test_a_complete_run_with_the_same_config_is_reused(built):
    root, recipe, source, _ = built
    stamp = (source / "summary.json").stat().st_mtime_ns
    assert pipeline.train_current(recipe, "exact", root / "runs", [], redo=False) == source
    assert (source / "summary.json").stat().st_mtime_ns == stamp


def test_a_run_whose_options_changed_is_trained_again(built, tmp_path):
    root, recipe, source, _ = built
    out = tmp_path / "runs"
    first = pipeline.train_current(recipe, "exact", out, [], redo=False)
    again = pipeline.train_current(recipe, "exact", out, ["optim.lr=1e-4"], redo=False)
    assert again == first
    assert "lr: 0.0001" in (again / "config.yaml").read_text()


def test_evaluation_is_remeasured_when_the_resolutions_change(built, capsys):
    root, recipe, source, study = built
    first = pipeline._evaluate(study, [source])
    assert set(first[source.name]) == {"32", "48"}
    assert first[source.name]["32"]["top1"] == pytest.approx(json.loads((source / "summary.json").read_text())["top1"])
    pipeline._evaluate(study, [source])
    assert "reusing" in capsys.readouterr().out
    study.eval_resolutions = [32, 64]
    second = pipeline._evaluate(study, [source])
    assert set(second[source.name]) == {"32", "64"}
    assert "reusing" not in capsys.readouterr().out


def test_study_table_says_where_accuracy_was_not_measured(built):
    root, recipe, source, study = built
    rows = pipeline.study_rows([source], {source.name: {"32": {"top1": 0.5}}})
    rows[0]["zero_shot_top1"] = rows[0]["zero_shot_top5"] = 0.1
    rows.append({**rows[0], "attention": "linformer", "top1_at": {"32": 0.4, "64": 0.3}})
    text = pipeline.render_study(rows, {"run": "src", "img_size": 32, "patch_size": 8, "top1": 0.5},
                                 {"pretrain": 1.0}, "cmd", {"git_commit": "abc"}, 16)
    exact_line = next(line for line in text.splitlines() if line.startswith("| exact"))
    assert "0.100 -> " in exact_line and "| 0.500 | not measured |" in exact_line
    assert "top-1 @ 64 px (64 tok)" in text and "git commit: abc" in text
