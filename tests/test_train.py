"""effvit-train on the bundled digits: every variant learns, artifacts follow the run-dir
contract, bad images are skipped and counted, and every set-up mistake is a clear error
raised before any training step."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from effvit_deploy import ATTENTIONS, build_model
from effvit_deploy.cli.train import main as cli_main
from effvit_deploy.data import BadImageWarning, write_digits_folder
from effvit_deploy.flops import count_params
from effvit_deploy.runs import load_run, save_weights
from effvit_deploy.train import ConfigError, load_config, train, train_all
from effvit_deploy.train.metrics import Progress
from effvit_deploy.train.run import SUMMARY_FIELDS

DIGITS = Path(__file__).resolve().parents[1] / "train" / "digits.yaml"
# The digits recipe shrunk to seconds: 2 blocks, 3 epochs, no warm-up.
FAST = [
    "epochs=3", "model_kwargs.depth=2", "sched.warmup_epochs=0", "optim.weight_decay=0.0", "log_interval=1000",
    "attention_kwargs.performer.redraw_interval=20",
]


@pytest.mark.slow
def test_digits_run_learns_and_writes_a_complete_run_dir(attention, tmp_path, capsys):
    run = train(load_config(DIGITS, FAST, attention=attention), tmp_path / attention)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["top1"] >= 0.4, f"{attention} did not learn: top1 {summary['top1']:.3f} (chance 0.1)"
    assert summary["top5"] >= summary["top1"]
    assert set(SUMMARY_FIELDS) <= set(summary)
    assert summary["attention"] == attention and summary["epochs"] == 3
    assert summary["peak_mem_kind"] == "process_peak_rss" and summary["peak_mem_bytes"] > 0
    assert summary["gflops"] > 0 and summary["bad_images_skipped"] == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[summary["best_epoch"]]["top1"] == summary["top1"]

    model, card = load_run(run)  # the contract later stages read
    assert summary["params"] == count_params(model)
    assert card.attention == attention and card.img_size == 32 and card.class_names == [str(i) for i in range(10)]
    assert card.data["name"] == "digits" and card.data["img_size"] == 32
    assert (card.mean, card.interpolation) == ((0.5, 0.5, 0.5), "bicubic")  # the model's pretrained_cfg
    resolved = load_config(run / "config.yaml")
    assert resolved["attention"] == attention and resolved["epochs"] == 3
    if attention == "performer":  # 3 x 44 steps with redraw_interval 20: features were redrawn
        fresh = card.build().state_dict()
        trained = load_file(str(run / "checkpoints" / "last.safetensors"))
        key = next(k for k in fresh if k.endswith("attn.features"))
        assert not torch.equal(fresh[key], trained[key])


@pytest.mark.slow
def test_train_all_skips_complete_runs_and_names_siblings(tmp_path, capsys):
    overrides = FAST + ["epochs=1"]
    runs = train_all(DIGITS, ["nystrom", "exact"], tmp_path, overrides, name="d")
    assert [r.name for r in runs] == ["d-nystrom", "d-exact"]
    stamp = (runs[0] / "summary.json").stat().st_mtime_ns
    again = train_all(DIGITS, ["nystrom"], tmp_path, overrides, name="d")
    assert again == runs[:1] and (runs[0] / "summary.json").stat().st_mtime_ns == stamp
    assert "complete, skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_corrupt_images_are_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "digits"
    write_digits_folder(root, img_size=32)
    good = next((root / "train" / "3").glob("*.png")).read_bytes()
    (root / "train" / "3" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "5" / "garbage.png").write_bytes(b"not an image at all")
    (root / "val" / "7" / "empty.png").write_bytes(b"")
    config = load_config(DIGITS, FAST + ["epochs=1"])
    config["data"].update(name="folder", root=str(root))
    with pytest.warns(BadImageWarning, match="skipping unreadable image"):
        summary = json.loads((train(config, tmp_path / "run") / "summary.json").read_text())
    assert summary["bad_images_skipped"] == 3
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert (record["train_bad_images"], record["val_bad_images"]) == (2, 1)


# --- configuration -------------------------------------------------------------------------

def test_unknown_recipe_key_names_the_key_and_close_matches(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown recipe key 'optim.lrr'.*Did you mean optim.lr"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"unknown recipe key 'epoch'.*Did you mean epochs"):
        load_config(DIGITS, ["epoch=3"])
    with pytest.raises(ConfigError, match=r"'performr' is not a mechanism"):
        load_config(DIGITS, ["attention_kwargs.performr.num_features=8"])


def test_overrides_are_yaml_values_with_exponent_floats():
    config = load_config(DIGITS, ["optim.lr=3e-4", "aug.re_prob=0.25", "model_kwargs.depth=6", "clip_grad=null"])
    assert config["optim"]["lr"] == pytest.approx(3e-4) and isinstance(config["optim"]["lr"], float)
    assert config["aug"] == {"re_prob": 0.25}
    assert config["model_kwargs"]["depth"] == 6 and config["model_kwargs"]["embed_dim"] == 96
    assert config["clip_grad"] is None


def test_every_recipe_resolves_for_every_attention():
    for recipe in sorted(DIGITS.parent.glob("*.yaml")):
        for attention in ATTENTIONS:
            assert load_config(recipe, attention=attention)["attention"] == attention


# --- clear errors before training, through the CLI -----------------------------------------

def _cli_error(capsys, *argv: str) -> str:
    code = cli_main(["--config", str(DIGITS), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("effvit-train: error: ") and "Traceback" not in err
    return err


def _image_folder(root: Path, splits: dict[str, list[str]]) -> Path:
    for split, classes in splits.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (len(name) * 40, 0, 0)).save(root / split / name / "0.png")
    return root


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("missing folder", ["--data", "{tmp}/nowhere"], r"nowhere does not exist"),
        ("empty folder", ["--data", "{tmp}/empty"], r"is empty: no image files"),
        ("class mismatch", ["--data", "{tmp}/mismatch"], r"different classes .*in train/ but not val/: \['b'\]"),
        ("unknown key", ["optim.lrr=1"], r"unknown recipe key 'optim.lrr'.*Did you mean optim.lr"),
        ("resolution", ["img_size=30"], r"img_size=30 is not a multiple of the patch size 8: use img_size=24 or 32"),
        ("unknown attention", ["--attention", "performr"], r"unknown attention 'performr'.*Did you mean performer"),
        ("pretrained shapes", ["pretrained={tmp}/other.safetensors"], r"do not fit .*blocks\.0\..*checkpoint \(48"),
    ],
)
def test_setup_mistakes_are_clear_errors_before_training(case, args, message, tmp_path, capsys):
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    _image_folder(tmp_path / "mismatch", {"train": ["a", "b"], "val": ["a"]})
    other = build_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=3)
    save_weights(other, tmp_path / "other.safetensors")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    err = _cli_error(capsys, "--out", str(tmp_path / "runs"), *args)
    assert re.search(message, err), err
    assert not any((tmp_path / "runs").glob("*/checkpoints")), "training started before the error"


@pytest.mark.slow
def test_incomplete_run_needs_resume_and_resume_extends_it(tmp_path, capsys):
    args = ["--attention", "linformer", "--out", str(tmp_path), "--name", "d", *FAST, "epochs=1"]
    assert cli_main(["--config", str(DIGITS), *args]) == 0
    run = tmp_path / "d-linformer"
    (run / "summary.json").unlink()  # as if killed after its first epoch
    err = _cli_error(capsys, *args)
    assert "already holds a run: pass --resume" in err
    assert cli_main(["--config", str(DIGITS), *args, "epochs=2", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["step"] == 2 * records[0]["step"]
    (run / "summary.json").unlink()
    err = _cli_error(capsys, *args, "epochs=3", "optim.lr=0.5", "--resume")
    assert "cannot resume" in err and "optim.lr" in err


def test_imagenet_recipe_features_run_on_cpu(tmp_path, capsys):
    """The fine-tuning recipe's machinery end to end at toy size: local pretrained weights, layer
    decay, RandAugment + mixup/cutmix + label smoothing, bf16 autocast, accumulation, EMA, clipping."""
    tiny = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)
    save_weights(build_model("vit_tiny_patch16_224", num_classes=7, **tiny), tmp_path / "pre.safetensors")
    overrides = [
        "model=vit_tiny_patch16_224", f"pretrained={tmp_path / 'pre.safetensors'}", "img_size=32",
        "model_kwargs={patch_size: 8, depth: 2, embed_dim: 48, num_heads: 3, drop_path_rate: 0.1}",
        "data={name: synthetic, num_classes: 5, train_size: 64, val_size: 16}", "epochs=2", "batch_size=16",
        "accum_steps=2", "num_workers=0", "device=cpu", "ema.enabled=true", "clip_grad=1.0", "log_interval=1",
    ]
    config = load_config(DIGITS.parent / "imagenet100_vit_s16.yaml", overrides, attention="linformer")
    config["attention_kwargs"]["linformer"] = {"proj_len": 8}
    run = train(config, tmp_path / "run")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]  # 4 micro-batches per epoch, 2 per optimizer step
    assert all(r["train_loss"] == r["train_loss"] and r["train_loss"] > 0 for r in records)  # finite
    out = capsys.readouterr().out
    assert "[linformer] epoch 2/2 step 4/4 loss" in out and "img/s" in out and "eta" in out  # not a TTY
    assert json.loads((run / "summary.json").read_text())["ema"] is True


def test_progress_is_a_tqdm_bar_on_a_terminal(capsys):
    progress = Progress(4, "[exact] epoch 1/1", enabled=True, log_interval=50, tty=True)
    for step in range(1, 5):
        if progress.due(step):
            progress.update(step, step * 8, loss=1.5, lr=1e-3)
    progress.close()
    captured = capsys.readouterr()
    assert "loss=1.5" in captured.err and "img/s" in captured.err and captured.out == ""


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_amp_run_learns(dtype, tmp_path):
    config = load_config(DIGITS, FAST + ["device=cuda", "amp.enabled=true", f"amp.dtype={dtype}"], attention="performer")
    summary = json.loads((train(config, tmp_path / dtype) / "summary.json").read_text())
    assert summary["top1"] >= 0.4 and summary["peak_mem_kind"] == "cuda_max_allocated"
    assert summary["device"].startswith("cuda")
