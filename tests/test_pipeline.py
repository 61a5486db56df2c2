"""The main job: reuses what is built only while its inputs hold; its tables carry intervals,
paired tests and image counts, and parse as GitHub-flavoured Markdown tables."""
import json
from dataclasses import replace

import pytest

import effvit_deploy.study as attention_study
from markdown_check import assert_tables_parse

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
    source = attention_study.train_current(recipe, "exact", root / "runs", [], redo=False)
    profile = attention_study.Profile("tiny", (recipe,), recipe, (32, 64), (32, 48))
    study = attention_study.Study(root / "runs", False, profile)
    return root, recipe, source, study


def test_a_complete_run_with_the_same_config_is_reused(built):
    root, recipe, source, _ = built
    stamp = (source / "summary.json").stat().st_mtime_ns
    assert attention_study.train_current(recipe, "exact", root / "runs", [], redo=False) == source
    assert (source / "summary.json").stat().st_mtime_ns == stamp


def test_a_run_whose_options_changed_is_trained_again(built, tmp_path):
    root, recipe, source, _ = built
    out = tmp_path / "runs"
    first = attention_study.train_current(recipe, "exact", out, [], redo=False)
    again = attention_study.train_current(recipe, "exact", out, ["optim.lr=1e-4"], redo=False)
    assert again == first
    assert "lr: 0.0001" in (again / "config.yaml").read_text()


def test_evaluation_scores_the_whole_validation_split_and_is_remeasured_when_resolutions_change(built, capsys):
    root, recipe, source, study = built
    first = attention_study.evaluate(study, [source])
    assert set(first[source.name]) == {"32", "48"}
    at_32 = first[source.name]["32"]
    summary = json.loads((source / "summary.json").read_text())
    assert at_32["images"] == 16 and len(at_32["correct"]) == 16  # val_size: the same images as training's val
    assert at_32["top1"] == pytest.approx(summary["top1"])
    assert at_32["ci95"][0] <= at_32["top1"] <= at_32["ci95"][1]
    out = capsys.readouterr().out
    assert "on 16 images" in out  # every printed accuracy carries its count
    attention_study.evaluate(study, [source])
    assert "reusing" in capsys.readouterr().out
    study.eval_resolutions = [32, 64]
    second = attention_study.evaluate(study, [source])
    assert set(second[source.name]) == {"32", "64"}
    assert "reusing" not in capsys.readouterr().out
    study.eval_resolutions = [32, 48]


def _acc(top1, images=1000, correct=None):
    return {"top1": top1, "images": images, "ci95": [top1 - 0.02, top1 + 0.02], "top5": 1.0,
            "correct": correct or "1" * round(top1 * images) + "0" * (images - round(top1 * images))}


def test_study_table_has_intervals_paired_tests_and_counts_and_parses_as_tables(built):
    root, recipe, source, study = built
    evals = {source.name: {"32": _acc(0.9, correct="1" * 900 + "0" * 100)}}
    rows = attention_study.study_rows([source], evals)
    rows[0]["zero_shot_top1"] = 0.1
    linformer = {**rows[0], "attention": "linformer", "run": "tiny-linformer",
                 "accuracy_at": {"32": _acc(0.85), "64": _acc(0.8)},
                 "vs_exact": {"32": {"a_only": 10, "b_only": 60, "p_value": 1e-9, "images": 1000}}}
    rows.append(linformer)
    text = attention_study.render_study(rows, {"run": "src", "img_size": 32, "patch_size": 8, "top1": 0.5, "val_images": 16},
                                 {"pretrain": 1.0}, "cmd", {"git_commit": "abc"}, load=(0.5, 0.5, 0.5))
    assert_tables_parse(text, expected=2)
    exact_line = next(line for line in text.splitlines() if line.startswith("| exact"))
    assert "| 0.100 |" in exact_line and "0.900 [0.880, 0.920]" in exact_line and "not measured" in exact_line
    assert "1,000 images" in text and "top-1 @ 64 px (64 tok)" in text and "git commit: abc" in text
    paired = next(line for line in text.splitlines() if line.startswith("| linformer") and "p 1e-09" in line)
    assert "-0.050 (p 1e-09; 10 vs 60)" in paired


def test_paired_tests_compare_each_mechanism_with_exact_on_the_same_images():
    evals = {"s-exact": {"128": _acc(0.5, 4, "1100")}, "s-performer": {"128": _acc(0.5, 4, "0011")}}
    tests = attention_study.paired_tests(evals, "s-exact")
    assert tests["s-performer"]["128"] == {"a_only": 2, "b_only": 2, "p_value": 1.0, "images": 4}


def test_the_profile_is_chosen_from_whether_cuda_is_visible(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attention_study.choose_profile("auto").name == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_study.choose_profile("auto").name == "cpu"
    with pytest.raises(ValueError, match="unknown profile"):
        attention_study.choose_profile("tpu")


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_profiles_meet_the_study_design(name):
    """>= 256 patch tokens at the study resolution, top-1 at >= 3 resolutions, >= 1,000 val
    images; the GPU one ViT-S/16-sized at >= 1,024 tokens with bf16 autocast."""
    from effvit_deploy.train import load_config

    profile = attention_study.PROFILES[name]
    config = load_config(profile.recipe, [], attention="exact")
    tokens = (profile.eval_resolutions[0] // config["model_kwargs"]["patch_size"]) ** 2
    assert config["img_size"] == profile.eval_resolutions[0] and len(profile.eval_resolutions) >= 3
    assert tokens >= (1024 if name == "gpu" else 256) and config["data"]["val_size"] >= 1000
    source = load_config(profile.pretrain_recipes[-1], [], attention="exact")
    assert source["img_size"] == config["img_size"] and source["data"] == config["data"] | {"train_size": source["data"]["train_size"]}
    if name == "gpu":
        assert config["model"] == "vit_small_patch16_224" and config["amp"] == {"enabled": True, "dtype": "bfloat16"}


@pytest.mark.slow
def test_the_gpu_profile_runs_end_to_end_on_cpu_at_tiny_size(tmp_path):
    """Every stage of the GPU profile's recipes, shrunk (2 blocks, 64 wide, 48 px, a few images)
    and on the CPU: the same stages and outputs as on a GPU."""
    tiny = ["device=cpu", "model_kwargs.depth=2", "model_kwargs.embed_dim=64", "model_kwargs.num_heads=2",
            "img_size=48", "data.train_size=16", "data.val_size=8", "batch_size=8", "num_workers=0",
            "attention_kwargs.linformer.proj_len=8", "attention_kwargs.performer.num_features=16",
            "attention_kwargs.nystrom.landmarks=4", "attention_kwargs.atrous.window_size=2",
            "attention_kwargs.atrous.dilations=[1,2]"]
    profile = replace(attention_study.PROFILES["gpu"], resolutions=(48,), eval_resolutions=(48, 64, 80), export_limit=8,
                      overrides=tuple(tiny))
    paths = attention_study.run(tmp_path / "runs", False, profile, command="test")
    study = json.loads(paths["study"].with_suffix(".json").read_text())
    assert study["profile"] == "gpu" and len(study["rows"]) == 5
    assert all(set(r["accuracy_at"]) == {"48", "64", "80"} and r["train_s_per_epoch"] > 0 for r in study["rows"])
    assert all(r["amp"] == "bfloat16" for r in study["rows"])
    assert_tables_parse(paths["study"].read_text())
    assert_tables_parse(paths["report"].read_text())
