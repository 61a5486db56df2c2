"""effvit-export: ONNX parity for every mechanism, reduced precisions, TensorRT compatibility,
failure modes. Each graph is exported once per session (module-scoped fixtures) and reused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from conftest import make_tiny_run, tiny_model
from effvit_deploy import ATTENTIONS
from effvit_deploy.backends import backend_status, file_sha256, find_artifact, load_runner
from effvit_deploy.cli.export import main as export_main
from effvit_deploy.export import ExportUnavailable, ParityError, check_tensorrt_compat, export_run
from effvit_deploy.export import onnx as onnx_module
from effvit_deploy.export import run as run_module
from effvit_deploy.runs import ModelCard, load_run, write_run

# Exports every mechanism (a module-wide fixture) and trains on digits: minutes on 2 CPU cores.
pytestmark = pytest.mark.slow

SIZES = [(224, 224), (384, 384), (224, 336)]
DIGITS_IMG = 32  # 2x2 patch grid: trains to ~0.9 val top-1 in a few seconds


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """One run per mechanism, exported once to ONNX fp32 with a 224..1024 profile (opt 384)."""
    root = tmp_path_factory.mktemp("export")
    runs = {}
    for attention in sorted(ATTENTIONS):
        run = make_tiny_run(root / f"tiny-{attention}", attention)
        export_run(run, min_res=224, opt_res=384, max_res=1024, max_batch=4, eval_limit=0)
        runs[attention] = run
    return runs


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_one_onnx_graph_matches_pytorch_at_square_and_non_square_sizes(exported, attention):
    run = exported[attention]
    path, entry = find_artifact(run, "onnx", "fp32")
    model, _ = load_run(run)
    session = _session(path)
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4, (attention, h, w)
    assert set(SIZES) <= {tuple(map(int, k.split("x"))) for k in entry["parity"] if k != "tolerance"}
    assert all(v["max_abs"] <= 1e-4 for k, v in entry["parity"].items() if k != "tolerance")
    assert entry["opset"] >= 17 and entry["ir_version"] >= 8
    assert entry["inputs"] == {"batch": [1, 1, 4], "height": [224, 384, 1024], "width": [224, 384, 1024]}


def test_manifest_records_run_info_and_verifiable_hashes(exported):
    run = exported["exact"]
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    for key in ("run", "model", "attention", "class_names", "mean", "std", "img_size", "patch_size", "created", "tool_versions"):
        assert key in manifest, key
    assert manifest["attention"] == "exact" and manifest["class_names"] == [str(i) for i in range(10)]
    (entry,) = manifest["artifacts"]
    path = run / "export" / entry["path"]
    assert entry["sha256"] == file_sha256(path) and entry["bytes"] == path.stat().st_size
    assert entry["tool_versions"]["onnxruntime"] == ort.__version__


def test_rerun_reuses_unchanged_artifacts_and_runner_loads_them(exported):
    run = exported["linformer"]
    before = (run / "export" / "model.onnx").stat().st_mtime_ns
    manifest = export_run(run, min_res=224, opt_res=384, max_res=1024, max_batch=4, eval_limit=0)
    assert manifest["reused"] == ["onnx/fp32"]
    assert (run / "export" / "model.onnx").stat().st_mtime_ns == before
    runner = load_runner(run, "onnxruntime")
    assert runner(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 10)


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_tensorrt_compat_check_passes_for_every_mechanism(exported, attention):
    report = check_tensorrt_compat(exported[attention] / "export" / "model.onnx")
    assert report.ok, report.summary()


def _graph_with(node: onnx.NodeProto, path: Path) -> Path:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_tensorrt_compat_check_names_an_unsupported_op(tmp_path, capsys):
    bad = _graph_with(helper.make_node("Unique", ["x"], ["y"], name="dedupe"), tmp_path / "unique.onnx")
    report = check_tensorrt_compat(bad)
    assert not report.ok and [p.op for p in report.problems] == ["Unique"]
    assert export_main([str(bad), "--check-tensorrt"]) == 1
    assert "Unique (node dedupe): not supported by the TensorRT ONNX parser" in capsys.readouterr().out


def test_tensorrt_compat_check_catches_antialiased_resize(tmp_path):
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic", antialias=1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "r.onnx"))
    (problem,) = check_tensorrt_compat(tmp_path / "r.onnx").problems
    assert problem.op == "Resize" and "antialias" in problem.reason


def test_failed_parity_leaves_no_artifact_and_reports_figures(exported, tmp_path, monkeypatch):
    """A graph that computes something else (one weight perturbed) must be refused."""
    good = exported["exact"] / "export" / "model.onnx"

    def corrupted_export(model, path, **kwargs):
        proto = onnx.load(str(good))
        head = next(t for t in proto.graph.initializer if t.name == "head.weight")
        head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) * 1.01, head.name))
        onnx.save(proto, str(path))
        return Path(path)

    monkeypatch.setattr(onnx_module, "export_onnx", corrupted_export)
    run = make_tiny_run(tmp_path / "tiny-exact", "exact")
    with pytest.raises(ParityError, match=r"224x224: max_abs=\S+ rel=\S+.*No artifact was written") as failure:
        export_run(run, min_res=224, opt_res=384, max_batch=4, eval_limit=0)
    max_abs = float(str(failure.value).split("224x224: max_abs=")[1].split()[0])
    assert max_abs > 1e-4
    leftovers = list((run / "export").iterdir()) if (run / "export").exists() else []
    assert leftovers == []


@pytest.mark.skipif(backend_status("tensorrt") is None, reason="TensorRT is usable here")
def test_gpu_formats_on_a_cpu_machine_give_a_clear_error(exported, capsys):
    run = exported["exact"]
    with pytest.raises(ExportUnavailable, match=r"pip install 'effvit-deploy\[gpu\]'"):
        export_run(run, formats=("tensorrt",))
    for fmt in ("tensorrt", "torch-tensorrt"):
        assert export_main([str(run), "--formats", fmt, "--precision", "fp16"]) == 3
        err = capsys.readouterr().err
        assert f"cannot build {fmt} artifacts here" in err and "pip install 'effvit-deploy[gpu]'" in err
        assert "Traceback" not in err


def test_bad_options_are_refused_by_name(exported, capsys):
    run = exported["exact"]
    assert export_main([str(run), "--min-res", "200"]) == 2
    assert "min_res=200 is not a positive multiple of the patch size 16" in capsys.readouterr().err
    assert export_main([str(run), "--formats", "onnx", "--precision", "int4"]) == 2
    assert "onnx has no int4 precision" in capsys.readouterr().err


# --- reduced precisions on a model that has actually learned the digits -----------------------

def _train_on_digits(model: torch.nn.Module, card: ModelCard, epochs: int = 5) -> None:
    from torch.utils.data import DataLoader

    from effvit_deploy.data import DigitsDataset, build_transform

    tf = build_transform(card.img_size, card.mean, card.std, card.interpolation, card.crop_pct, train=False)
    data = DigitsDataset("train", card.img_size, transform=tf)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.as_tensor(data.labels)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    for _ in range(epochs):
        for xb, yb in DataLoader(list(zip(x, y)), batch_size=64, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("trained") / "digits-exact"
    model = tiny_model("exact", img_size=DIGITS_IMG)
    card = ModelCard.for_model(model, img_size=DIGITS_IMG, class_names=[str(i) for i in range(10)],
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                               data={"name": "digits", "root": None, "img_size": DIGITS_IMG})
    _train_on_digits(model, card)
    write_run(run_dir, model, card)
    return run_dir, export_run(run_dir, precisions=("fp32", "fp16"), int8=True, max_res=128, max_batch=4)


def test_trained_model_is_accurate_in_every_onnx_precision(trained_export):
    _, trained_export = trained_export
    entries = {a["precision"]: a for a in trained_export["artifacts"]}
    assert set(entries) == {"fp32", "fp16", "int8", "int8-static"}
    assert trained_export["torch_val_top1"] >= 0.8  # chance is 0.1
    assert entries["fp32"]["accuracy"]["n"] == 359
    assert entries["fp32"]["accuracy"]["top1_agreement_vs_torch"] == 1.0
    assert entries["fp16"]["accuracy"]["top1_agreement_vs_torch"] >= 0.99
    assert entries["int8"]["accuracy"]["top1_agreement_vs_torch"] >= 0.97
    assert entries["int8-static"]["accuracy"]["top1_agreement_vs_torch"] >= 0.97
    assert abs(entries["int8-static"]["accuracy"]["top1_delta_vs_torch"]) <= 0.01
    assert entries["fp16"]["bytes"] < 0.6 * entries["fp32"]["bytes"]
    assert entries["fp16"]["tensorrt_check"]["ok"]


def test_fp16_graph_keeps_layernorm_and_softmax_in_fp32(trained_export):
    run_dir, _ = trained_export
    path, _ = find_artifact(run_dir, "onnx", "fp16")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.value_info]}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    kept = [n for n in proto.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept and all(types[n.input[0]] == TensorProto.FLOAT for n in kept)
    matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert sum(types.get(n.input[0]) == TensorProto.FLOAT16 for n in matmuls) >= len(matmuls) // 2
    assert types["pixel_values"] == TensorProto.FLOAT


def test_plan_builds_the_onnx_graph_each_engine_precision_needs():
    plan = run_module._plan(["tensorrt"], ["fp16"], int8=False)
    assert plan == [("onnx", "fp32"), ("onnx", "fp16"), ("tensorrt", "fp16")]
    assert run_module._plan(["onnx"], ["fp32"], int8=True) == [("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int8-static")]
    assert run_module._plan(["onnx", "openvino"], ["fp32", "fp16"], int8=False) == [
        ("onnx", "fp32"), ("onnx", "fp16"), ("openvino", "fp32")]


@pytest.mark.parametrize("profile", [(64, 64, 1024), (224, 384, 1024), (224, 224, 512)])
def test_parity_uses_three_sizes_in_range_one_of_them_non_square(profile):
    from effvit_deploy.export.verify import parity_resolutions

    sizes = parity_resolutions(*profile, patch=16)
    lo, _, hi = profile
    assert len(sizes) >= 3 and any(h != w for h, w in sizes)
    assert all(lo <= s <= hi and s % 16 == 0 for hw in sizes for s in hw)


def test_ort_tensorrt_options_cover_every_dynamic_dimension(tmp_path):
    from effvit_deploy.backends.onnxruntime import tensorrt_provider_options

    entry = {"precision": "fp16", "inputs": {"batch": [1, 1, 32], "height": [224, 384, 1024], "width": [224, 384, 1024]}}
    opts = tensorrt_provider_options(tmp_path / "model.fp16.onnx", entry)
    assert opts["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert opts["trt_profile_opt_shapes"] == "pixel_values:1x3x384x384"
    assert opts["trt_profile_max_shapes"] == "pixel_values:32x3x1024x1024"
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert Path(opts["trt_engine_cache_path"]).is_dir()


# --- GPU: TensorRT and Torch-TensorRT (pytest -m cuda) -----------------------------------------

def _needs(backend: str):
    reason = backend_status(backend)
    return pytest.mark.skipif(reason is not None, reason=f"{backend} unavailable: {reason}")


@pytest.mark.cuda
@_needs("tensorrt")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_pytorch_and_reuses_its_timing_cache(tmp_path, precision):
    from effvit_deploy.backends.tensorrt import gpu_slug

    run = make_tiny_run(tmp_path / "tiny-performer", "performer")
    profile = dict(min_res=64, opt_res=128, max_res=256, max_batch=4)
    manifest = export_run(run, formats=("tensorrt",), precisions=(precision,), **profile)
    entry = next(a for a in manifest["artifacts"] if a["format"] == "tensorrt")
    assert gpu_slug() in entry["path"] and entry["tensorrt_version"] in entry["path"]
    assert entry["accuracy"]["top1_agreement_vs_torch"] >= (1.0 if precision == "fp32" else 0.97)
    assert not entry["timing_cache_reused"]
    again = export_run(run, formats=("tensorrt",), precisions=(precision,), force=True, **profile)
    assert next(a for a in again["artifacts"] if a["format"] == "tensorrt")["timing_cache_reused"]
    runner = load_runner(run, "tensorrt", precision)
    assert runner(np.zeros((3, 3, 64, 96), np.float32)).shape == (3, 10)


@pytest.mark.cuda
@_needs("torch-tensorrt")
def test_torch_tensorrt_program_matches_pytorch(tmp_path):
    run = make_tiny_run(tmp_path / "tiny-exact", "exact")
    manifest = export_run(run, formats=("torch-tensorrt",), precisions=("fp16",), min_res=64, opt_res=64, max_res=256, max_batch=4)
    entry = next(a for a in manifest["artifacts"] if a["format"] == "torch-tensorrt")
    assert entry["path"].endswith(".ep") and entry["accuracy"]["top1_agreement_vs_torch"] >= 0.97
    runner = load_runner(run, "torch-tensorrt", "fp16")
    assert runner(np.zeros((2, 3, 64, 128), np.float32)).shape == (2, 10)
