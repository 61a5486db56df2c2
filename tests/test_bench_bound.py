"""The attention-free bound (no token mixing, projections kept): a reference mechanism whose run
directory every stage treats like any run, and the report's reading of it."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from effvit_deploy import build_model
from effvit_deploy.attention import ATTENTION_FREE, ATTENTIONS, REFERENCES, NoTokenMixing
from effvit_deploy.backends import file_sha256, find_artifact
from effvit_deploy.bench.bound import bound_run, bound_subjects
from effvit_deploy.bench.report import write_report
from effvit_deploy.bench.shapes import parse_attentions
from effvit_deploy.flops import count_flops
from effvit_deploy.runs import load_run, save_weights, weights_path

from conftest import TINY_IMG, TINY_MODEL, make_tiny_run, tiny_model


def tiny_bound() -> torch.nn.Module:
    """`tiny_model`'s architecture built with the reference mechanism, by its registry name."""
    torch.manual_seed(0)
    return build_model(TINY_MODEL, attention=ATTENTION_FREE, num_classes=10, depth=2, img_size=TINY_IMG)


def test_the_reference_mechanism_is_built_by_name_and_kept_out_of_all():
    assert REFERENCES == {"attention-free": NoTokenMixing}
    assert list(ATTENTIONS) == ["exact", "linformer", "performer", "nystrom", "atrous"]
    assert parse_attentions("all") == list(ATTENTIONS), "'all' is the trainable mechanisms only"
    model = tiny_bound()
    assert all(type(b.attn) is NoTokenMixing for b in model.blocks)
    assert model.effvit_spec["attention"] == ATTENTION_FREE
    with pytest.raises(ValueError, match="unknown attention.*attention-free"):
        build_model(TINY_MODEL, attention="attention-fre", num_classes=10, depth=2, img_size=TINY_IMG)


def test_attention_free_model_mixes_no_tokens():
    model = tiny_bound()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., :16, :16] += 3.0  # only the first patch changes
    with torch.inference_mode():
        fx, fy = model.forward_features(x), model.forward_features(y)
    changed = (fx - fy).abs().amax(-1)[0]  # per token: class token, then the 16 patches
    assert changed[1] > 1e-3, "the changed patch's own token must change"
    assert torch.all(changed[0] == 0) and torch.all(changed[2:] == 0), "no other token may see the change"


@pytest.mark.parametrize("attention", ["exact", "linformer"])
def test_bound_run_holds_the_source_weights_and_removes_exactly_the_attention_flops(tmp_path, attention):
    """The bound's run directory loads with `load_run`; every tensor it has is the source run's
    (for a mechanism with parameters of its own, those are the ones left out), and its FLOPs are
    the source's minus the token mixing."""
    run = make_tiny_run(tmp_path / attention, attention)
    source, _ = load_run(run)
    bound, card = load_run(bound_run(run, tmp_path / "cache"))
    assert card.attention == ATTENTION_FREE and not card.attention_kwargs and not card.data
    assert all(type(b.attn) is NoTokenMixing for b in bound.blocks)
    mine, theirs = bound.state_dict(), source.state_dict()
    extra = set(theirs) - set(mine)
    assert set(mine) <= set(theirs) and all(torch.equal(v, theirs[k]) for k, v in mine.items())
    assert (not extra) if attention == "exact" else (extra and all(".attn." in k for k in extra))
    if attention == "exact":
        for res in (64, 128):
            tokens, dim = 1 + (res // 16) ** 2, source.embed_dim
            attention_core = len(source.blocks) * 4 * tokens**2 * dim  # QK^T and AV, a multiply-add = 2
            assert count_flops(source, res) - count_flops(bound, res) == attention_core


def test_bound_run_is_reused_while_the_source_weights_are_unchanged(tmp_path):
    run = make_tiny_run(tmp_path / "exact", "exact")
    bound = bound_run(run, tmp_path / "cache")
    written = weights_path(bound).stat().st_mtime_ns
    assert bound_run(run, tmp_path / "cache") == bound and weights_path(bound).stat().st_mtime_ns == written
    source, _ = load_run(run)
    with torch.no_grad():
        source.head.weight.add_(1.0)
    save_weights(source, weights_path(run))
    bound_run(run, tmp_path / "cache")
    assert torch.equal(load_run(bound)[0].head.weight, source.head.weight), "new source weights: the bound is rewritten"
    with pytest.raises(ValueError, match="already a reference run"):
        bound_run(bound, tmp_path / "cache")
    assert bound_subjects([run, bound], tmp_path / "cache", [32], 1) == [bound], "a bound gets no bound of its own"


@pytest.mark.slow
def test_bound_artifacts_are_built_verified_and_bound_to_weights_by_export_run(tmp_path):
    run = make_tiny_run(tmp_path / "exact", "exact")
    bound = bound_run(run, tmp_path / "cache", formats=("onnx", "openvino"), min_res=32, max_res=64)
    manifest = json.loads((bound / "export" / "manifest.json").read_text())
    assert manifest["attention"] == "attention-free" and manifest["weights_sha256"] == file_sha256(weights_path(bound))
    assert [(e["format"], e["precision"]) for e in manifest["artifacts"]] == [("onnx", "fp32"), ("openvino", "fp32")]
    for entry in manifest["artifacts"]:
        assert entry["inputs"]["height"] == [32, 32, 64] and entry["source"]["weights_sha256"] == manifest["weights_sha256"]
        sizes = [k for k in entry["parity"] if k != "tolerance"]
        assert len(sizes) >= 3 and all(entry["parity"][k]["max_abs"] <= 1e-4 for k in sizes)
        find_artifact(bound, entry["format"], "fp32")  # hash, manifest and weights checked as for any run
    onnx_file = bound / "export" / "model.onnx"
    built = onnx_file.stat().st_mtime_ns
    bound_run(run, tmp_path / "cache", formats=("onnx", "openvino"), min_res=32, max_res=64)
    assert onnx_file.stat().st_mtime_ns == built, "current artifacts are reused"
    source, _ = load_run(run)
    with torch.no_grad():
        source.head.weight.add_(1.0)
    save_weights(source, weights_path(run))
    bound_run(run, tmp_path / "cache", formats=("onnx",), min_res=32, max_res=64)
    rebuilt = json.loads((bound / "export" / "manifest.json").read_text())["artifacts"][0]
    assert rebuilt["source"]["weights_sha256"] == file_sha256(weights_path(bound)) != manifest["weights_sha256"]


def test_the_bound_is_exported_at_every_floating_point_precision_the_sweep_asks_for(tmp_path, monkeypatch):
    """An fp16 sweep reads fp16 variants against an fp16 bound, never an fp32 one; precisions no
    requested format has, and int8 (calibrated on images a bound does not carry), are left out."""
    from effvit_deploy.bench import bound as bound_module

    exported = []
    monkeypatch.setattr(bound_module, "export_run", lambda run_dir, formats, precisions, **_: exported.append(
        (tuple(formats), tuple(precisions))))
    run = make_tiny_run(tmp_path / "exact", "exact")
    bound_subjects([run], tmp_path / "cache", [32], 1, formats=("onnx", "openvino"),
                   precisions=("fp16", "int8", "bf16", "fp32", "int8-static"))
    bound_subjects([run], tmp_path / "cache", [32], 1, formats=("onnx",), precisions=("int8",))
    bound_subjects([run], tmp_path / "cache", [32], 1, precisions=("fp16",))  # torch only: nothing to export
    assert exported == [(("onnx", "openvino"), ("fp16", "fp32")), (("onnx",), ("fp32",))]


@pytest.mark.slow
def test_an_fp16_sweep_on_onnx_runtime_times_the_bound_at_fp16(tmp_path):
    from effvit_deploy.bench import run_benchmark
    from effvit_deploy.bench.results import load_results
    from effvit_deploy.export import export_run

    run = make_tiny_run(tmp_path / "exact", "exact")
    export_run(run, formats=("onnx",), precisions=("fp16",), min_res=32, max_res=32, max_batch=2, verify=False)
    rows = load_results(run_benchmark([run], ["onnxruntime"], [32], [1], ["fp16"], tmp_path / "bench", accuracy=False,
                                      isolate=False, warmup=1, repeats=3, progress=False))
    status = {r["attention"]: (r["status"], r["reason"], r["precision"]) for r in rows}
    assert status["exact"][0] == "ok" and status["attention-free"] == ("ok", "", "fp16"), status


def _row(attention, res, ms, **extra):
    return {"mode": "model", "run": f"r-{attention}", "model": "m", "attention": attention, "backend": "onnxruntime",
            "precision": "fp32", "batch": 1, "resolution": res, "tokens": 1 + (res // 16) ** 2, "patch": 16,
            "status": "ok", "reason": "", "latency_median_ms": ms, "thread_policy": "passive", "threads": 2,
            "omp_wait_policy": "PASSIVE", "env": {"cpu_model": "test cpu"}, **extra}


def test_report_reads_each_speedup_against_the_largest_possible(tmp_path):
    rows = [_row("exact", 224, 100.0), _row("attention-free", 224, 40.0), _row("nystrom", 224, 50.0),
            _row("exact", 448, 400.0), _row("attention-free", 448, 100.0), _row("nystrom", 448, 200.0)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(tmp_path / "results.jsonl", tmp_path).read_text()
    assert "| onnxruntime | fp32 | 1 | 224 | 197 | nystrom | 2.00x | 2.50x | 80% | 1.25x |  |" in text
    assert "| onnxruntime | fp32 | 1 | 448 | 785 | nystrom | 2.00x | 4.00x | 50% | 2.00x |  |" in text
    assert "Thread policy: passive" in text and "within timing noise" not in text
    assert "target" not in text.lower(), "no goals unless the user gives them"
    noisy = rows + [_row("exact", 896, 1000.0), _row("attention-free", 896, 1100.0), _row("nystrom", 896, 900.0)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in noisy))
    assert "| 122% | 0.82x | bound not the fastest: within timing noise, re-measure |" in \
        write_report(tmp_path / "results.jsonl", tmp_path).read_text()
    text = write_report(tmp_path / "results.jsonl", tmp_path, speedup_targets={448: 3.0}, budgets_ms=(60,)).read_text()
    assert "| nystrom | 448 px speed-up >= 3x | 2.00x | 4.00x | missed (2.00x of 3x) |" in text
    assert "| <= 60 ms |" in text and "10000 ms" not in text


def test_recommendations_rank_by_top1_measured_at_the_cells_resolution(tmp_path):
    rows = [_row("exact", 224, 100.0, top1=0.9, top1_resolution=224, top1_images=1000, top1_ci95=[0.88, 0.92]),
            _row("nystrom", 224, 50.0, top1=0.8, top1_resolution=224, top1_images=1000, top1_ci95=[0.77, 0.83]),
            _row("exact", 448, 400.0, top1=0.9, top1_resolution=224, top1_images=None),
            _row("nystrom", 448, 200.0, top1=0.7, top1_resolution=448, top1_images=1000)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(tmp_path / "results.jsonl", tmp_path, budgets_ms=(30, 60, 1000, 3000)).read_text()
    recommend = text.split("## Recommendations")[1].split("##")[0]
    assert "| 224 px | <= 30 ms | no configuration fits |" in recommend
    assert "| 224 px | <= 60 ms | nystrom (onnxruntime fp32, 50 ms, top-1 80.0% [77.0, 83.0] on 1,000 images) |" in recommend
    assert ("| 224 px | <= 1000 ms to <= 3000 ms | exact (onnxruntime fp32, 100 ms, top-1 90.0% [88.0, 92.0] on 1,000 "
            "images) |") in recommend, "budgets with the same answer are merged, not repeated"
    assert "| 448 px | <= 1000 ms to <= 3000 ms | nystrom (onnxruntime fp32, 200 ms, top-1 70.0% on 1,000 images) |" in recommend, \
        "exact's 448 px top-1 was measured at 224 px only: it must not outrank a figure measured at 448"
    assert "Not on the plot (top-1 not measured at their own resolution): exact onnxruntime fp32 448 px" in text


class _BlockDispatches(TorchDispatchMode):
    """Aten ops dispatched, and bytes they write to new storage (views and in-place results that
    alias an input are free), while `recording` is on: what a GPU pays in launches and traffic."""

    def __init__(self) -> None:
        super().__init__()
        self.recording, self.ops, self.bytes_written = False, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.recording:
            inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
            self.ops.append(str(func))
            self.bytes_written += sum(t.numel() * t.element_size() for t in tree_flatten(out)[0]
                                      if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs)
        return out


def _one_block(model, size: tuple[int, int], autocast: bool) -> _BlockDispatches:
    """Dispatches of the first block in one forward (batch 2) of `model` at `size` (H, W)."""
    counter = _BlockDispatches()
    block = model.blocks[0]
    block.register_forward_pre_hook(lambda *_: setattr(counter, "recording", True))
    block.register_forward_hook(lambda *_: setattr(counter, "recording", False))
    x = torch.randn(2, 3, *size)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), counter:
        model(x)
    return counter


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)], ids=["64x64", "64x96"])
def test_the_bound_block_dispatches_no_more_ops_and_writes_no_more_bytes_than_exact(size, autocast):
    """Item 5 of the efficiency issue: the bound is a bound on any backend only if it does no work
    exact attention skips; counted as a GPU would pay it (kernels, bytes written), per block."""
    exact = _one_block(tiny_model("exact"), size, autocast)
    bound = _one_block(tiny_bound(), size, autocast)
    assert "aten.scaled_dot_product_attention.default" in exact.ops, "the control: exact's block mixes tokens"
    assert len(bound.ops) <= len(exact.ops), (bound.ops, exact.ops)
    assert bound.bytes_written <= exact.bytes_written
    assert not any("permute" in op or "transpose" in op or "unbind" in op for op in bound.ops), \
        "the bound needs no head split/merge"


@pytest.mark.slow
def test_the_bound_onnx_graph_has_no_node_kind_more_than_exact(tmp_path):
    """The graph ONNX Runtime, OpenVINO and TensorRT run: the bound has no node type more often
    than exact's graph, and no attention at all (no Softmax)."""
    import collections

    import onnx

    from effvit_deploy.export.onnx import export_onnx

    counts = {}
    for name, model in (("exact", tiny_model("exact")), ("bound", tiny_bound())):
        path = export_onnx(model, tmp_path / f"{name}.onnx", sample_size=(64, 64), max_batch=2, max_res=128)
        counts[name] = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert counts["exact"]["Softmax"] > 0 and counts["bound"]["Softmax"] == 0
    more = {op: (n, counts["exact"][op]) for op, n in counts["bound"].items() if n > counts["exact"][op]}
    assert not more, f"the bound's graph has more of these nodes than exact's (bound, exact): {more}"


def test_a_cell_measured_on_fewer_than_500_images_says_so_and_is_not_recommended(tmp_path):
    rows = [_row("exact", 224, 100.0, top1=0.9, top1_resolution=224, top1_images=32),
            _row("nystrom", 224, 50.0, top1=0.95, top1_resolution=224, top1_images=499)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(tmp_path / "results.jsonl", tmp_path, budgets_ms=(1000,)).read_text()
    recommend = text.split("## Recommendations")[1].split("##")[0]
    assert "none recommended: top-1 not measured at 224 px on >= 500 images (only on 32, 499)" in recommend
    pareto = text.split("## Accuracy vs latency")[1].split("##")[0]
    assert "on 499 images, under 500: not recommended" in pareto


def test_report_takes_pytorch_top1_from_the_evaluation_stage_with_its_count(tmp_path):
    rows = [_row("exact", 128, 10.0, backend="torch"), _row("exact", 128, 8.0),
            _row("exact", 512, 300.0, backend="torch")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    accuracy = {("r-exact", 128): {"top1": 0.95, "images": 1000, "ci95": [0.936, 0.962]}}
    text = write_report(tmp_path / "results.jsonl", tmp_path, budgets_ms=(1000,), accuracy=accuracy).read_text()
    recommend = text.split("## Recommendations")[1].split("##")[0]
    assert "| 128 px | <= 1000 ms | exact (torch fp32, 10 ms, top-1 95.0% [93.6, 96.2] on 1,000 images) |" in recommend
    assert "| 512 px | <= 1000 ms | none recommended: top-1 not measured at 512 px on >= 500 images |" in recommend
