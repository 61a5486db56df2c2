"""init_from: a variant starts from a finished run's weights, bit-equal, with an honest report."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from effvit_deploy.cli.train import main as train_main
from effvit_deploy.train import ConfigError, load_config, train

TINY = [
    "model=vit_tiny_patch16_224", "img_size=32", "model_kwargs.depth=2", "model_kwargs.embed_dim=64",
    "model_kwargs.num_heads=2", "model_kwargs.patch_size=8", "data.name=cluttered", "data.train_size=64",
    "data.val_size=40", "epochs=1", "batch_size=16", "num_workers=0", "threads=1", "deterministic=true",
    "device=cpu", "aug=null", "attention_kwargs.linformer.proj_len=8", "log_interval=100",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "src-exact"
    return train(load_config(None, TINY, attention="exact"), run)


def _recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("attention: exact\n")
    return str(path)


def _finetune(source, run_dir, attention, *extra):
    return train(load_config(None, [*TINY, f"init_from={source}", *extra], attention=attention), run_dir)


def test_init_from_loads_every_shared_tensor_bit_equal_and_reports_new_ones(source, tmp_path):
    run = _finetune(source, tmp_path / "ft-linformer", "linformer", "epochs=1", "optim.lr=1e-12", "sched.warmup_lr=1e-12",
                    "sched.min_lr=1e-12")
    summary = json.loads((run / "summary.json").read_text())
    report = summary["init_from"]
    assert report["source"] == str(source) and report["source_attention"] == "exact"
    assert report["new"] and all(".attn." in k for k in report["new"])
    assert not report["resampled"] and not report["reinitialised"]
    # initial weights: rebuild the swapped model exactly as training did and compare tensor by tensor
    from effvit_deploy.models import build_model
    from effvit_deploy.train.config import model_arguments
    from effvit_deploy.train.init_from import init_from_run

    cfg = load_config(None, [*TINY, f"init_from={source}"], attention="linformer")
    model = build_model(cfg["model"], attention="linformer", num_classes=10, **model_arguments(cfg))
    got = init_from_run(model, source)
    src = load_file(str(source / "checkpoints" / "best.safetensors"))
    own = model.state_dict()
    shared = [k for k in own if k in src]
    assert got.loaded == len(shared) == len(own) - len(got.new)
    for key in shared:
        assert torch.equal(own[key], src[key]), key
    assert summary["zero_shot_top1"] is not None and "zero_shot_top5" in summary


def test_zero_shot_exact_from_exact_equals_the_source_accuracy(source, tmp_path):
    run = _finetune(source, tmp_path / "ft-exact", "exact", "eval_batch_size=8")
    summary = json.loads((run / "summary.json").read_text())
    source_summary = json.loads((source / "summary.json").read_text())
    assert summary["zero_shot_top1"] == source_summary["top1"]
    assert summary["zero_shot_top5"] == source_summary["top5"]
    assert summary["init_from"]["new"] == [] and summary["init_from"]["unused"] == []


def test_init_from_at_another_resolution_resamples_only_the_position_embedding(source, tmp_path):
    from effvit_deploy.models import build_model
    from effvit_deploy.train.config import model_arguments
    from effvit_deploy.train.init_from import init_from_run

    cfg = load_config(None, [*TINY, "img_size=64"], attention="exact")
    model = build_model(cfg["model"], attention="exact", num_classes=10, **model_arguments(cfg))
    report = init_from_run(model, source)
    assert report.resampled == ["pos_embed (1, 17, 64) -> (1, 65, 64)"]
    src, own = load_file(str(source / "checkpoints" / "best.safetensors")), model.state_dict()
    assert all(torch.equal(own[k], src[k]) for k in own if k != "pos_embed")
    assert torch.equal(own["pos_embed"][:, 0], src["pos_embed"][:, 0])  # the class token's own embedding


def test_architecture_mismatch_is_a_one_line_error_naming_the_tensors(source, tmp_path, capsys):
    cfg = load_config(None, [*TINY, "model_kwargs.depth=3", f"init_from={source}"], attention="exact")
    with pytest.raises(ConfigError, match=r"does not match this model .*blocks\.2\.") as err:
        train(cfg, tmp_path / "deeper")
    assert "\n" not in str(err.value)
    code = train_main(["--config", _recipe(tmp_path), "--out", str(tmp_path), "--init-from", str(source),
                       *TINY, "model_kwargs.embed_dim=96", "model_kwargs.num_heads=3"])
    err_text = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err_text and re.search(r"blocks\.0\.\S+ \(\d+, 64\) vs \(\d+, 96\)", err_text)


def test_missing_source_run_is_a_one_line_error(tmp_path, capsys):
    code = train_main(["--config", _recipe(tmp_path), "--out", str(tmp_path), "--init-from", str(tmp_path / "nope"), *TINY])
    err_text = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err_text and "is not a finished run" in err_text
    with pytest.raises(ConfigError, match="excludes pretrained"):
        load_config(None, [*TINY, "init_from=runs/x", "pretrained=true"])
