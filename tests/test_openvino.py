"""OpenVINO as a backend and export format, and the graph formulation that makes it agree with
ONNX Runtime and PyTorch at every input size."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from conftest import make_tiny_run, tiny_model
from effvit_deploy.backends import ort_session
from effvit_deploy.backends.openvino import compiled_runner
from effvit_deploy.export.onnx import export_onnx
from effvit_deploy.export.resample import resample_abs_pos_embed, timm_resample_abs_pos_embed
from effvit_deploy.export.verify import TOLERANCES

SIZES = [(64, 64), (96, 96), (64, 128)]  # the training size, a larger square, a non-square


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Large-norm position embedding and sharper attention logits, as a trained ViT has: the
    resampled embedding then matters to the logits and softmax is peaked."""
    with torch.no_grad():
        model.pos_embed.mul_(20.0)
        for block in model.blocks:
            block.attn.qkv.weight.mul_(3.0)
    return model.eval()


@pytest.mark.parametrize("new_size", [(4, 4), (7, 9), (24, 24), (20, 11), (3, 30)])
def test_matrix_resampling_matches_timm_bicubic_antialias(new_size):
    torch.manual_seed(0)
    posemb = torch.randn(1, 1 + 14 * 14, 32) * 5
    expected = timm_resample_abs_pos_embed(posemb, list(new_size), num_prefix_tokens=1)
    got = resample_abs_pos_embed(posemb, list(new_size), num_prefix_tokens=1)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["exact", "linformer", "performer", "nystrom", "atrous"])
def test_openvino_matches_pytorch_and_onnxruntime_at_three_sizes(attention, tmp_path):
    model = trained_like(tiny_model(attention))
    path = export_onnx(model, tmp_path / "model.onnx", sample_size=(64, 64), max_batch=4, max_res=128)
    cubic = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Resize"
             and any(a.name == "mode" and a.s == b"cubic" for a in n.attribute)]
    assert not cubic, f"bicubic Resize (the position embedding's) left in the graph: {cubic}"
    session, runner = ort_session(path), compiled_runner(path, "fp32", None)
    generator = torch.Generator().manual_seed(0)
    for hw in SIZES:
        x = torch.randn(2, 3, *hw, generator=generator)
        with torch.inference_mode():
            expected = model(x).numpy()
        ort_out = session.run(None, {"pixel_values": x.numpy()})[0]
        ov_out = runner(x.numpy())
        scale = np.abs(expected).max()
        assert np.abs(ov_out - expected).max() <= TOLERANCES["fp32"]["max_abs"] * max(1.0, scale), (hw, scale)
        assert np.abs(ov_out - ort_out).max() <= 1e-5 * scale, hw


@pytest.mark.slow
def test_openvino_and_int8_artifacts_are_verified_and_served(tmp_path):
    from effvit_deploy.backends import load_runner
    from effvit_deploy.demo.predict import servable_backends
    from effvit_deploy.export import export_run

    run = make_tiny_run(tmp_path / "run", "exact")
    manifest = export_run(run, formats=("onnx", "openvino"), int8=True, max_res=128, max_batch=4, eval_limit=40)
    entries = {(a["format"], a["precision"]): a for a in manifest["artifacts"]}
    assert set(entries) >= {("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int8-static"),
                            ("openvino", "fp32"), ("openvino", "int8-static")}
    for (fmt, precision), entry in entries.items():
        assert len([k for k in entry["parity"] if k != "tolerance"]) >= 3, (fmt, precision)
        assert entry["accuracy"]["n"] == 40 and "top1_delta_vs_torch" in entry["accuracy"], (fmt, precision)
    assert entries[("onnx", "int8-static")]["quantization"]["calibration_images"] > 0
    ir = entries[("openvino", "fp32")]
    assert ir["weights_file"]["path"].endswith(".bin") and ir["bytes"] > ir["weights_file"]["bytes"] > 0
    assert "openvino" in servable_backends(run) and "openvino" in servable_backends(run, "int8-static")
    assert "onnxruntime" not in servable_backends(run, "fp16")
    logits = load_runner(run, "openvino")(np.zeros((1, 3, 96, 64), np.float32))
    assert logits.shape == (1, 10) and np.isfinite(logits).all()


@pytest.mark.slow
def test_static_int8_keeps_layernorm_softmax_and_gelu_in_float(tmp_path):
    from effvit_deploy.export.precision import STATIC_INT8_OPS, quantize_static_int8

    model = tiny_model("exact")
    src = export_onnx(model, tmp_path / "model.onnx", sample_size=(64, 64), max_batch=4, max_res=64)
    images = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    recipe = quantize_static_int8(src, tmp_path / "q.onnx", images, "pixel_values")
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    dequantized = [o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output]
    fed = {op for name in dequantized for op in consumers.get(name, [])}
    assert fed and fed <= {*STATIC_INT8_OPS, "Shape"}, f"quantised inputs reach {fed}"
    ops = {n.op_type for n in graph.node}
    assert {"LayerNormalization", "Softmax"} <= ops and recipe["calibration_images"] == 8
    batch = images[:2]
    quantized = ort_session(tmp_path / "q.onnx").run(None, {"pixel_values": batch})[0]
    assert quantized.shape == (2, 10) and np.isfinite(quantized).all()
