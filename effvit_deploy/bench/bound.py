"""The attention-free bound: the same model with its token mixing removed.

An efficient attention mechanism can only shrink the token-mixing step. Every mechanism here
still computes the q/k/v projection and the output projection (they share timm's `qkv` and
`proj` weights), and every block still runs its LayerNorms, MLP and residuals. So the fastest
any mechanism could make a model is that model with mixing replaced by a no-op: each token keeps
its own value vector, `attend(q, k, v) = v` (`attention.NoTokenMixing`). Its latency, per backend and
resolution, bounds every variant's speed-up: the largest speed-up possible is exact / bound,
and a variant achieves bound / variant of it.

Identity on the values rather than zeros, so no graph compiler prunes the projections
(`attention/no_mixing.py`). For ViT-S/16 at 4,097 tokens the bound's FLOPs are ~36% of exact's,
so no mechanism can exceed ~2.8x there by FLOPs.

The bound is a benchmark subject, not a mechanism one trains: `bound_run` writes a run
directory beside the shape runs (the source run's card and weights plus `bound.json`) and, for
the ONNX- and OpenVINO-reading backends, exports the bound model's ONNX graph (and its OpenVINO
IR) into its `export/` with the same exporter and input profile as the variants, each checked
against PyTorch before it is used.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_json
from ..attention import NoTokenMixing, TimmAttention
from ..runs import MODEL_CARD, load_run, run_name
from ..stamps import is_current, write_stamp

BOUND = "attention-free"
MARKER = "bound.json"
PARITY_RTOL = 1e-4


def remove_token_mixing(model: nn.Module) -> nn.Module:
    """`model` with every block's attention replaced by `NoTokenMixing`, in place."""
    blocks = [b for b in model.modules() if isinstance(getattr(b, "attn", None), TimmAttention)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no effvit attention layers: build it with effvit_deploy.build_model")
    for block in blocks:
        block.attn = NoTokenMixing.replacing(block.attn)
    return model.eval()


def is_bound_run(run_dir: Union[str, Path]) -> bool:
    return (Path(run_dir) / MARKER).is_file()


def load_bound_model(run_dir: Union[str, Path]) -> nn.Module:
    """The bound model of a run written by `bound_run` (or of any run: its mixing removed)."""
    model, _ = load_run(run_dir)
    return remove_token_mixing(model)


def _export(run_dir: Path, formats: Sequence[str], min_res: int, max_res: int, max_batch: int) -> list[dict[str, Any]]:
    """The bound's ONNX graph (and OpenVINO IR) and manifest entries, as `effvit-export` writes a variant's."""
    from ..export import export_onnx, make_tensorrt_friendly
    from ..backends import file_sha256

    model, card = load_run(run_dir)
    model = remove_token_mixing(model)
    inputs = {"batch": [1, 1, max_batch], "height": [min_res, min_res, max_res], "width": [min_res, min_res, max_res]}
    final = run_dir / "export" / "model.onnx"
    with atomic_path(final) as tmp:
        export_onnx(model, tmp, sample_size=(min_res, min_res), max_batch=max_batch, max_res=max_res)
        rewrites = make_tensorrt_friendly(tmp, min_res, card.img_size)
        parity = _check_parity(model, _onnxruntime(tmp), min_res, "ONNX")
        entries = [{"format": "onnx", "precision": "fp32", "path": final.name, "sha256": file_sha256(tmp),
                    "bytes": tmp.stat().st_size, "inputs": inputs, "rewrites": rewrites, "parity": parity}]
    if "openvino" in formats:
        import openvino as ov

        from ..backends.openvino import compiled_runner

        xml = run_dir / "export" / "model.openvino.xml"
        ov.save_model(ov.convert_model(final), xml, compress_to_fp16=False)
        parity = _check_parity(model, compiled_runner(xml, "fp32", card), min_res, "OpenVINO")
        entries.append({"format": "openvino", "precision": "fp32", "path": xml.name, "sha256": file_sha256(xml),
                        "inputs": inputs, "parity": parity, "onnx": final.name})
    write_json(run_dir / "export" / "manifest.json", {
        "run": run_name(run_dir), "model": card.model, "attention": BOUND, "num_classes": card.num_classes,
        "img_size": card.img_size, "patch_size": card.patch_size, "artifacts": entries})
    return entries


def _onnxruntime(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from ..backends import ort_session

    session = ort_session(path, quiet=True)
    return lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]


def _check_parity(model: nn.Module, predict: Callable[[np.ndarray], np.ndarray], res: int, label: str) -> dict[str, float]:
    """Relative max logit error of an artifact against PyTorch at one size; raises past tolerance."""
    x = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x).numpy()
    got = predict(x.numpy())
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    if not rel <= PARITY_RTOL:  # NaN compares false: a non-finite output fails too
        raise RuntimeError(f"the attention-free {label} artifact differs from PyTorch (relative error {rel:.1e} at {res} px)")
    return {"resolution": res, "rel_max_error": rel}


def bound_run(
    source: Union[str, Path], cache_dir: Union[str, Path], *, formats: Sequence[str] = (),
    min_res: Optional[int] = None, max_res: int = 1024, max_batch: int = 2,
) -> Path:
    """The attention-free twin of run `source` under cache_dir (made once, reused after)."""
    source, cache_dir = Path(source), Path(cache_dir)
    run_dir = cache_dir / f"{run_name(source)}-{BOUND}"
    stamp = {"source": str(source.resolve()), "token_mixing": "identity on values (attend(q, k, v) = v)",
             "formats": list(formats), "min_res": min_res, "max_res": max_res, "max_batch": max_batch}
    if is_current(run_dir / MARKER, stamp):
        return run_dir
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / MODEL_CARD, run_dir / MODEL_CARD)
    for which in ("best", "last"):
        src = source / "checkpoints" / f"{which}.safetensors"
        if src.is_file():
            shutil.copyfile(src, run_dir / "checkpoints" / f"{which}.safetensors")
    if formats:
        card = json.loads((source / MODEL_CARD).read_text())
        _export(run_dir, formats, min_res or int(card["img_size"]), max_res, max_batch)
    write_stamp(run_dir / MARKER, stamp)
    return run_dir
