"""Every user mistake, on every command and in `build_model`, ends in one line that names the file
or key at fault, with a consistent exit code, no traceback, and no file of the run changed or
left behind (a table of bad inputs, each run in a fresh copy of the same working folder)."""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_MODEL, make_tiny_run
from effvit_deploy import build_model
from effvit_deploy.cli import bench, data, demo, export, train
from effvit_deploy.cli.errors import DEBUG_ENV

REPO = Path(__file__).resolve().parents[1]
MAINS: dict[str, Callable[[Optional[list[str]]], int]] = {
    "train": train.main, "export": export.main, "bench": bench.main, "data": data.main, "demo": demo.main,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a tiny trained run and every kind of bad file the table points at."""
    root = tmp_path_factory.mktemp("mistakes")
    make_tiny_run(root / "run", "exact")
    (root / "broken.yaml").write_text("epochs: [1, 2\n")
    (root / "list.yaml").write_text("- epochs\n- 3\n")
    (root / "typo.yaml").write_text("optim:\n  lrr: 0.1\n")
    (root / "profile.yaml").write_text("colour: blue\n")
    (root / "matrix.yaml").write_text("- 224\n")
    (root / "random.safetensors").write_bytes(os.urandom(4096))
    (root / "empty.pt").write_bytes(b"")
    buffer = io.BytesIO()
    torch.save({"head.weight": torch.zeros(2, 2)}, buffer)
    (root / "truncated.pth").write_bytes(buffer.getvalue()[:300])
    (root / "pickled.pth").write_bytes(pickle.dumps({"payload": Path("/etc/passwd")}))
    (root / "notes.txt").write_text("not weights")
    save_file({"x": torch.zeros(2)}, str(root / "ok.safetensors"))
    (root / "model.onnx").write_bytes(b"not onnx")
    (root / "not-a-run").mkdir()
    garbled = make_tiny_run(root / "garbled", "exact")
    (garbled / "model.json").write_text("{not json")
    listed = make_tiny_run(root / "listed", "exact")
    (listed / "export").mkdir()
    (listed / "export" / "manifest.json").write_text('["model.onnx"]')
    damaged = make_tiny_run(root / "damaged", "exact")
    (damaged / "checkpoints" / "best.safetensors").write_bytes(os.urandom(2048))
    resume = root / "runs" / "corrupt-exact" / "checkpoints"
    resume.mkdir(parents=True)
    (resume / "last_state.pt").write_bytes(b"PK\x03\x04 cut short")
    _data_sets(root)
    _exported_runs(root)
    return root


def _data_sets(root: Path) -> None:
    """Folder data sets that look fine from afar: one class; an empty class; an unreadable class."""
    from test_data_folder import make_folder

    make_folder(root / "oneclass", {"train": {"only": 4}, "val": {"only": 2}})
    make_folder(root / "emptyclass", {"train": {"a": 4, "b": 4, "hollow": 0}, "val": {"a": 2, "b": 2, "hollow": 0}})
    make_folder(root / "brokenclass", {"train": {"a": 4, "b": 4, "garbled": 0}, "val": {"a": 2, "b": 2, "garbled": 0}})
    for split in ("train", "val"):
        (root / "brokenclass" / split / "garbled" / "0.png").write_bytes(b"\x89PNG cut")


def _exported_runs(root: Path) -> None:
    """Exported runs whose artifacts must not be served: built from other weights, modified after
    export, and listed under a path that leaves the export folder."""
    import json
    import shutil

    from conftest import tiny_model
    from effvit_deploy.export import export_run
    from effvit_deploy.runs import save_weights

    exported = make_tiny_run(root / "exported", "exact")
    export_run(exported, eval_limit=0, max_res=128)
    for name in ("stale", "modified", "escaping"):
        shutil.copytree(exported, root / name)
    other = tiny_model("exact")
    with torch.no_grad():
        other.head.weight.mul_(3.0)
    save_weights(other, root / "stale" / "checkpoints" / "best.safetensors")
    graph = root / "modified" / "export" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-16])
    manifest_file = root / "escaping" / "export" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["artifacts"][0]["path"] = "../../../../etc/passwd"
    manifest_file.write_text(json.dumps(manifest))


RECIPE = str(REPO / "train" / "digits.yaml")
SMALL = ["model_kwargs.depth=2", "epochs=1"]

# (id, command, argv with {w} for the work folder, exit code, culprit the line must name)
CASES = [
    ("train-missing-recipe", "train", ["--config", "{w}/nope.yaml"], 2, "nope.yaml"),
    ("train-invalid-yaml", "train", ["--config", "{w}/broken.yaml"], 2, "broken.yaml"),
    ("train-recipe-not-mapping", "train", ["--config", "{w}/list.yaml"], 2, "list.yaml"),
    ("train-unknown-key", "train", ["--config", "{w}/typo.yaml"], 2, "optim.lrr"),
    ("train-lr-not-a-number", "train", ["--config", RECIPE, "optim.lr=fast"], 2, "optim.lr"),
    ("train-epochs-float", "train", ["--config", RECIPE, "epochs=2.5"], 2, "epochs"),
    ("train-negative-batch", "train", ["--config", RECIPE, "batch_size=-4"], 2, "batch_size"),
    ("train-ema-decay-range", "train", ["--config", RECIPE, "ema.decay=1.5"], 2, "ema.decay"),
    ("train-seed-text", "train", ["--config", RECIPE, "seed=abc"], 2, "seed"),
    ("train-device", "train", ["--config", RECIPE, "device=tpu"], 2, "device"),
    ("train-override-without-value", "train", ["--config", RECIPE, "optim.lr"], 2, "optim.lr"),
    ("train-malformed-override", "train", ["--config", RECIPE, "aug={mixup: "], 2, "aug="),
    ("train-unknown-attention", "train", ["--config", RECIPE, "--attention", "flash"], 2, "flash"),
    ("train-unknown-flag", "train", ["--config", RECIPE, "--on-bad-image", "skip"], 2, "--on-bad-image"),
    ("train-missing-data", "train", ["--config", RECIPE, "--data", "{w}/no-data", *SMALL], 2, "no-data"),
    ("train-img-size-vs-patch", "train", ["--config", RECIPE, "img_size=30", *SMALL], 2, "img_size"),
    ("train-random-safetensors", "train", ["--config", RECIPE, "pretrained={w}/random.safetensors", *SMALL], 2,
     "random.safetensors"),
    ("train-pickled-weights", "train", ["--config", RECIPE, "pretrained={w}/pickled.pth", *SMALL], 2, "pickled.pth"),
    ("train-empty-weights", "train", ["--config", RECIPE, "pretrained={w}/empty.pt", *SMALL], 2, "empty.pt"),
    ("train-truncated-weights", "train", ["--config", RECIPE, "pretrained={w}/truncated.pth", *SMALL], 2,
     "truncated.pth"),
    ("train-resume-corrupt-state", "train", ["--config", RECIPE, "--name", "corrupt", "--resume", *SMALL], 2,
     "last_state.pt"),
    ("export-missing-run", "export", ["{w}/nope-run"], 2, "nope-run"),
    ("export-garbled-model-json", "export", ["{w}/garbled"], 2, "model.json"),
    ("export-damaged-weights", "export", ["{w}/damaged"], 2, "best.safetensors"),
    ("export-missing-profile", "export", ["{w}/run", "--config", "{w}/nope.yaml"], 2, "nope.yaml"),
    ("export-profile-unknown-key", "export", ["{w}/run", "--config", "{w}/profile.yaml"], 2, "colour"),
    ("export-unknown-format", "export", ["{w}/run", "--formats", "coreml"], 2, "coreml"),
    ("export-onnx-without-check", "export", ["{w}/model.onnx"], 2, "model.onnx"),
    ("export-max-batch-text", "export", ["{w}/run", "--max-batch", "lots"], 2, "--max-batch"),
    ("bench-report-without-results", "bench", ["--report-only", "--out", "{w}/bench"], 2, "results"),
    ("bench-resolutions-text", "bench", ["--resolutions", "big"], 2, "--resolutions"),
    ("bench-missing-config", "bench", ["--config", "{w}/nope.yaml"], 2, "nope.yaml"),
    ("bench-config-not-mapping", "bench", ["--config", "{w}/matrix.yaml"], 2, "matrix.yaml"),
    ("bench-not-a-run", "bench", ["{w}/not-a-run", "--out", "{w}/bench"], 2, "not-a-run"),
    ("bench-manifest-not-a-manifest", "bench", ["{w}/listed", "--backends", "onnxruntime", "--out", "{w}/bench"], 2,
     "manifest.json"),
    ("bench-unknown-attention", "bench", ["--layer-only", "--attention", "flash", "--out", "{w}/bench"], 2, "flash"),
    ("data-check-missing-folder", "data", ["check", "{w}/no-images"], 2, "no-images"),
    ("data-imagenet-missing", "data", ["imagenet100", "--imagenet", "{w}/no-imagenet", "--out", "{w}/in100"], 2,
     "no-imagenet"),
    ("data-digits-size-zero", "data", ["digits", "--out", "{w}/digits", "--img-size", "0"], 2, "--img-size"),
    ("demo-not-a-run", "demo", ["{w}/not-a-run"], 2, "not-a-run"),
    ("demo-max-pixels-zero", "demo", ["{w}/run", "--max-pixels", "0"], 2, "--max-pixels"),
    ("demo-unknown-backend", "demo", ["{w}/run", "--backend", "coreml"], 2, "coreml"),
    # issue 17: paths of the wrong kind, options out of range, bad data sets, untrustworthy artifacts
    ("train-recipe-is-a-folder", "train", ["--config", "{w}/not-a-run"], 2, "is a folder, expected a YAML file"),
    ("train-data-is-a-file", "train", ["--config", RECIPE, "--data", "{w}/notes.txt", *SMALL], 2,
     "--data {w}/notes.txt is a file, expected a folder"),
    ("train-out-is-a-file", "train", ["--config", RECIPE, "--out", "{w}/notes.txt", *SMALL], 2,
     "--out {w}/notes.txt is a file"),
    ("train-init-from-missing", "train", ["--config", RECIPE, "--init-from", "{w}/nope-run", *SMALL], 2,
     "nope-run' is not a finished run"),
    ("train-init-from-a-file", "train", ["--config", RECIPE, "--init-from", "{w}/notes.txt", *SMALL], 2,
     "is a file, expected a finished run folder"),
    ("train-pretrained-is-a-folder", "train", ["--config", RECIPE, "pretrained={w}/not-a-run", *SMALL], 2,
     "is a folder, expected a weights file"),
    ("train-one-class", "train", ["--config", RECIPE, "--data", "{w}/oneclass", *SMALL], 2, "1 class(es) ['only']"),
    ("train-empty-class-folder", "train", ["--config", RECIPE, "--data", "{w}/emptyclass", *SMALL], 2,
     "hollow (train/val)"),
    ("train-unreadable-class", "train", ["--config", RECIPE, "--data", "{w}/brokenclass", *SMALL], 2,
     "garbled (train/val)"),
    ("train-on-empty-class-choice", "train", ["--config", RECIPE, "data.on_empty_class=ignore", *SMALL], 2,
     "data.on_empty_class"),
    ("train-one-synthetic-class", "train", ["--config", RECIPE, "--data", "synthetic", "data.num_classes=1", *SMALL],
     2, "data.num_classes"),
    ("export-eval-limit-negative", "export", ["{w}/run", "--eval-limit", "-5"], 2, "--eval-limit"),
    ("export-max-batch-zero", "export", ["{w}/run", "--max-batch", "0"], 2, "--max-batch"),
    ("export-max-res-zero", "export", ["{w}/run", "--max-res", "0"], 2, "--max-res"),
    ("export-unknown-precision", "export", ["{w}/run", "--precision", "fp8"], 2, "fp8"),
    ("export-empty-formats", "export", ["{w}/run", "--formats", ","], 2, "--formats"),
    ("export-profile-is-a-folder", "export", ["{w}/run", "--config", "{w}/not-a-run"], 2,
     "--config {w}/not-a-run is a folder, expected a file"),
    ("export-run-is-a-file", "export", ["{w}/notes.txt"], 2, "{w}/notes.txt is a file, expected a training run folder"),
    ("export-bad-option-before-any-run", "export", ["{w}/run", "{w}/exported", "--precision", "fp8"], 2, "fp8"),
    ("export-check-tensorrt-not-onnx", "export", ["{w}/model.onnx", "--check-tensorrt"], 2,
     "model.onnx is not a readable ONNX model"),
    ("export-min-res-vs-patch", "export", ["{w}/run", "--min-res", "30"], 2, "min_res=30"),
    ("bench-empty-backends", "bench", ["--layer-only", "--backends", "", "--out", "{w}/bench"], 2, "--backends"),
    ("bench-unknown-precision", "bench", ["--layer-only", "--precision", "fp8", "--out", "{w}/bench"], 2, "fp8"),
    ("bench-resolution-vs-patch", "bench", ["{w}/run", "--backends", "torch", "--resolutions", "36", "--out",
                                            "{w}/bench"], 2, "--resolutions 36"),
    ("bench-layer-resolution-below-patch", "bench", ["--layer-only", "--attention", "exact", "--resolutions", "7",
                                                     "--out", "{w}/bench"], 2, "--resolutions 7"),
    ("bench-repeats-zero", "bench", ["--layer-only", "--repeats", "0", "--out", "{w}/bench"], 2, "--repeats"),
    ("bench-timeout-zero", "bench", ["--layer-only", "--timeout", "0", "--out", "{w}/bench"], 2, "--timeout"),
    ("bench-warmup-negative", "bench", ["--layer-only", "--warmup", "-1", "--out", "{w}/bench"], 2, "--warmup"),
    ("bench-max-time-zero", "bench", ["--layer-only", "--max-time", "0", "--out", "{w}/bench"], 2, "--max-time"),
    ("bench-memory-cap-negative", "bench", ["--layer-only", "--memory-cap", "-1", "--out", "{w}/bench"], 2,
     "--memory-cap"),
    ("bench-accuracy-limit-zero", "bench", ["{w}/run", "--accuracy-limit", "0", "--out", "{w}/bench"], 2,
     "--accuracy-limit"),
    ("bench-dim-vs-heads", "bench", ["--layer-only", "--dim", "100", "--heads", "3", "--out", "{w}/bench"], 2, "--dim"),
    ("bench-out-is-a-file", "bench", ["--layer-only", "--out", "{w}/notes.txt"], 2, "--out {w}/notes.txt is a file"),
    ("bench-config-is-a-folder", "bench", ["--config", "{w}/not-a-run"], 2, "is a folder, expected a file"),
    ("bench-run-is-a-file", "bench", ["{w}/notes.txt", "--out", "{w}/bench"], 2, "notes.txt is a file"),
    ("bench-missing-gpu-runtime", "bench", ["{w}/run", "--backends", "tensorrt", "--out", "{w}/bench"], 3,
     "--backends tensorrt cannot run here"),
    ("bench-stale-artifact", "bench", ["{w}/stale", "--backends", "onnxruntime", "--out", "{w}/bench"], 2, "is stale"),
    ("bench-modified-artifact", "bench", ["{w}/modified", "--backends", "onnxruntime", "--out", "{w}/bench"], 2,
     "not the file effvit-export wrote"),
    ("bench-artifact-path-escapes", "bench", ["{w}/escaping", "--backends", "onnxruntime", "--out", "{w}/bench"], 2,
     "leaves the export folder"),
    ("demo-port-out-of-range", "demo", ["{w}/run", "--port", "99999"], 2, "--port"),
    ("demo-host-not-an-address", "demo", ["{w}/run", "--host", "999.1.1.1"], 2, "--host 999.1.1.1"),
    ("demo-max-file-size-text", "demo", ["{w}/run", "--max-file-size", "lots"], 2, "--max-file-size"),
    ("demo-concurrency-zero", "demo", ["{w}/run", "--concurrency", "0"], 2, "--concurrency"),
    ("demo-run-is-a-file", "demo", ["{w}/notes.txt"], 2, "notes.txt is a file"),
    ("demo-stale-artifact", "demo", ["{w}/stale", "--backend", "onnxruntime", "--port", "7997"], 2, "is stale"),
    ("demo-modified-artifact", "demo", ["{w}/modified", "--backend", "onnxruntime", "--port", "7997"], 2,
     "not the file effvit-export wrote"),
    ("data-check-a-file", "data", ["check", "{w}/notes.txt"], 2, "notes.txt is a file"),
    ("data-check-workers-negative", "data", ["check", "{w}/oneclass", "--workers", "-1"], 2, "--workers"),
    ("data-digits-out-is-a-file", "data", ["digits", "--out", "{w}/notes.txt"], 2, "--out {w}/notes.txt is a file"),
    ("data-imagenet-is-a-file", "data", ["imagenet100", "--imagenet", "{w}/notes.txt", "--out", "{w}/in100"], 2,
     "--imagenet {w}/notes.txt is a file"),
    ("data-classes-is-a-folder", "data", ["imagenet100", "--imagenet", "{w}/not-a-run", "--out", "{w}/in100",
                                          "--classes", "{w}/not-a-run"], 2, "--classes {w}/not-a-run is a folder"),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _call(main: Callable, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse
        return int(stop.code)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit(case, workdir, capsys, monkeypatch):
    _, command, argv, code, culprit = case
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.chdir(workdir)
    argv = [a.replace("{w}", str(workdir)) for a in argv]
    culprit = culprit.replace("{w}", str(workdir))
    if command == "train" and "--out" not in argv:
        argv += ["--out", str(workdir / "runs")]
    before = _snapshot(workdir)
    assert _call(MAINS[command], argv) == code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err + out and "weights_only=False" not in err
    assert re.match(r"effvit-\w+( \w+)?: (error|internal error)", lines[0]) and "internal error" not in lines[0], lines[0]
    assert culprit in lines[0], lines[0]
    assert _snapshot(workdir) == before  # nothing written, changed or left behind


def test_the_debug_flag_and_variable_show_the_traceback(workdir, capsys, monkeypatch):
    argv = ["--config", RECIPE, "optim.lr=fast", "--out", str(workdir / "runs")]
    assert train.main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert train.main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


BUILD_CASES = [
    ("unknown-model", dict(model_name="vit_nope"), "vit_nope"),
    ("unknown-attention", dict(attention="flash"), "flash"),
    ("missing-weights", dict(pretrained="{w}/nope.safetensors"), "nope.safetensors"),
    ("random-safetensors", dict(pretrained="{w}/random.safetensors"), "random.safetensors"),
    ("pickled-weights", dict(pretrained="{w}/pickled.pth"), "pickled.pth"),
    ("truncated-weights", dict(pretrained="{w}/truncated.pth"), "truncated.pth"),
    ("empty-weights", dict(pretrained="{w}/empty.pt"), "empty.pt"),
    ("unsupported-suffix", dict(pretrained="{w}/notes.txt"), "notes.txt"),
    ("wrong-shapes", dict(pretrained="{w}/ok.safetensors"), "ok.safetensors"),
    ("bad-model-argument", dict(embed_dim=-3), "embed_dim"),
]


@pytest.mark.parametrize("case", BUILD_CASES, ids=[c[0] for c in BUILD_CASES])
def test_build_model_mistakes_are_one_line_naming_the_culprit(case, workdir):
    _, kwargs, culprit = case
    kwargs = {k: v.replace("{w}", str(workdir)) if isinstance(v, str) else v for k, v in kwargs.items()}
    kwargs = {"model_name": TINY_MODEL, "depth": 2, **kwargs}
    before = _snapshot(workdir)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        build_model(**kwargs)
    message = str(error.value)
    assert "\n" not in message and culprit in message and "weights_only=False" not in message, message
    assert _snapshot(workdir) == before


def test_every_help_example_names_a_file_that_exists():
    for name, module in (("train", train), ("export", export), ("bench", bench), ("data", data), ("demo", demo)):
        for path in re.findall(r"\b(?:train|export|serve)/[\w.-]+\.(?:yaml|txt)\b", module.EPILOG):
            assert (REPO / path).is_file(), f"effvit-{name} --help names {path}, which does not exist"
