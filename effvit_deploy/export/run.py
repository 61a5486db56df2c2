"""`export_run`: every requested artifact of one run directory, verified, listed in manifest.json.

    runs/NAME/export/
      manifest.json          run info + one entry per artifact (docs/ARCHITECTURE.md, "Run directory")
      model.onnx             fp32, dynamic batch/H/W, TensorRT-friendly rewrites, onnxslim'd when exact
      model.fp16.onnx        fp16 weights/activations, LayerNorm/softmax/exp in fp32, fp32 I/O
      model.int8.onnx        dynamic int8 quantisation (CPU)
      model.int8-static.onnx static QDQ int8, calibrated on the run's training images (precision.py)
      model.openvino.xml/.bin            OpenVINO IR of the fp32 graph (openvino.py)
      model.int8-static.openvino.xml/.bin  OpenVINO IR of the static int8 graph
      model.<prec>.<gpu>.trt<ver>.engine     TensorRT engine (tensorrt.py)
      model.<prec>.torch_trt.ep              Torch-TensorRT exported program (torch_tensorrt.py)

Each artifact is written to a temporary name, verified against PyTorch fp32 (verify.py) and only
then renamed; a failed check raises ParityError with the figures and leaves nothing behind.
Re-running reuses an artifact whose weights hash and options are unchanged (unless `force`).
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..atomic import _writer_alive, atomic_path, remove_stale_temps, write_json
from ..backends import (MANIFEST, ArtifactError, BackendUnavailable, ThreadPolicy, backend_status, check_artifact, file_sha256,
                        ort_session)
from ..backends.onnxruntime import INPUT_NAME
from ..backends.openvino import compiled_runner
from ..backends.tensorrt import load_engine_runner
from ..backends.torch_tensorrt import load_torch_tensorrt_runner
from ..runs import ModelCard, load_model_card, load_run, run_name, run_state, unfinished_note, weights_path
from .onnx import DEFAULT_OPSET, export_onnx, graph_info, make_tensorrt_friendly, slim_onnx
from .precision import attention_scopes, convert_fp16, mark_attention_math, quantize_int8, quantize_static_int8
from .trt_compat import check_tensorrt_compat, require_tensorrt_compat
from .verify import Reference, build_reference, check_accuracy, check_parity, image_reference, parity_resolutions

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino", "tensorrt", "torch-tensorrt")
PRECISIONS = {"onnx": ("fp32", "fp16", "int8", "int8-static"), "openvino": ("fp32", "int8-static"),
              "tensorrt": ("fp32", "fp16", "bf16"), "torch-tensorrt": ("fp32", "fp16", "bf16")}
ONNX_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx",
              "int8-static": "model.int8-static.onnx"}
_TOOLS = ("torch", "timm", "onnx", "onnxscript", "onnxruntime", "onnxslim", "openvino")
CALIBRATION_IMAGES = 64
# Bumped when the graphs' contents change for the same options (2: attention-math nodes marked
# for fp16), so artifacts of an older effvit-deploy are rebuilt, not reused.
ARTIFACT_LAYOUT = 2


WORK_PREFIX = ".openvino."  # + PID + "." + random: the OpenVINO conversion's work folder


def remove_stale_work(export_dir: Path) -> list[Path]:
    """Delete what a killed export left besides atomic temp files: OpenVINO work folders
    (`.openvino.PID.*`) and onnxslim outputs (`.model.onnx.PID.*.tmp.slim`) of processes that are
    gone; returns what was removed."""
    removed = []
    for path in [*export_dir.glob(f"{WORK_PREFIX}*"), *export_dir.glob(".*.tmp.slim")]:
        if path.name.startswith(WORK_PREFIX):
            pid = path.name.removeprefix(WORK_PREFIX).split(".")[0]
        else:
            pid = path.name.split(".")[-4]  # .model.onnx.PID.XXXX.tmp.slim
        if pid.isdigit() and _writer_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class ExportUnavailable(BackendUnavailable):
    """A requested format cannot be built on this machine; the message says how to fix it."""


def tool_versions(*extra: str) -> dict[str, Optional[str]]:
    """Installed versions of the export toolchain (None when absent)."""
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in (*_TOOLS, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def ort_predict(path: Union[str, Path]) -> Callable[[np.ndarray], np.ndarray]:
    """float32 NCHW -> float32 logits through ONNX Runtime's CPU provider."""
    session = ort_session(path, policy=ThreadPolicy(passive=True), quiet=True)  # verification, not timing
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0], dtype=np.float32)


def _check_available(formats: Sequence[str]) -> None:
    for fmt in formats:
        if fmt == "onnx":
            continue
        reason = backend_status(fmt)
        if reason is not None:
            raise ExportUnavailable(f"cannot build {fmt} artifacts here: {reason}")


def _resolve_profile(card: ModelCard, min_res, opt_res, max_res, max_batch) -> dict[str, list[int]]:
    patch = card.patch_size
    min_res = card.img_size if min_res is None else int(min_res)
    opt_res = min_res if opt_res is None else int(opt_res)
    for name, value in (("min_res", min_res), ("opt_res", opt_res), ("max_res", max_res)):
        if value <= 0 or value % patch:
            raise ValueError(f"{name}={value} is not a positive multiple of the patch size {patch}: use e.g. "
                             f"{max(patch, round(value / patch) * patch)}")
    if not min_res <= opt_res <= max_res:
        raise ValueError(f"need min_res <= opt_res <= max_res, got {min_res}, {opt_res}, {max_res}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    res = [min_res, opt_res, int(max_res)]
    return {"batch": [1, 1, int(max_batch)], "height": res, "width": list(res)}


def _plan(formats: Sequence[str], precisions: Sequence[str], int8: bool) -> list[tuple[str, str]]:
    """(format, precision) in build order; an engine or IR needs the ONNX graph it is built from.

    With several formats, each builds the requested precisions it has (`--formats onnx,openvino
    --precision fp32,fp16`: fp16 ONNX, fp32 both); a precision no requested format has is an error.
    """
    plan: list[tuple[str, str]] = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    for prec in precisions:
        if not any(prec in PRECISIONS[fmt] for fmt in formats):
            valid = sorted({p for fmt in formats for p in PRECISIONS[fmt]})
            raise ValueError(f"{', '.join(formats)} has no {prec} precision; valid: {', '.join(valid)}")
    for fmt in formats:
        for prec in precisions:
            if prec not in PRECISIONS[fmt]:
                continue
            if fmt == "tensorrt":
                plan += [("onnx", "fp32"), ("onnx", "fp16" if prec == "fp16" else "fp32")]
            if fmt == "openvino":
                plan += [("onnx", "fp32"), ("onnx", prec)]
            if fmt == "onnx" and prec != "fp32":
                plan.append(("onnx", "fp32"))
            plan.append((fmt, prec))
    if int8:
        plan += [("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int8-static")]
        if "openvino" in formats:
            plan.append(("openvino", "int8-static"))
    return list(dict.fromkeys(plan))


class _Exporter:
    """Builds, verifies and records artifacts for one run; state shared across them."""

    def __init__(self, run_dir: Path, inputs: dict[str, list[int]], opset: int, verify: bool, force: bool, eval_limit: int,
                 calibration_images: int = CALIBRATION_IMAGES):
        self.run_dir = run_dir
        self.export_dir = run_dir / "export"
        self.model, self.card = load_run(run_dir)
        self.inputs = inputs
        self.opset = opset
        self.verify = verify
        self.force = force
        self.eval_limit = eval_limit
        self.calibration_images = calibration_images
        self.weights_sha256 = file_sha256(weights_path(run_dir))
        self._reference: Optional[Reference] = None
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.reused: set[tuple[str, str]] = set()
        self.previous: dict[str, Any] = {}
        manifest = self.export_dir / MANIFEST
        if manifest.is_file():
            self.previous = json.loads(manifest.read_text())
            for entry in self.previous.get("artifacts", []):
                self.entries[(entry["format"], entry["precision"])] = entry

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            h = self.inputs["height"]
            eval_size = min(max(self.card.img_size, h[0]), h[2])
            resolutions = parity_resolutions(h[0], h[1], h[2], self.card.patch_size)
            self._reference = build_reference(self.model, self.card, resolutions, eval_size, self.eval_limit)
        return self._reference

    def source(self, fmt: str, precision: str) -> dict[str, Any]:
        """What an artifact depends on; a GPU artifact also on the GPU and its TensorRT build."""
        source = {"weights_sha256": self.weights_sha256, "format": fmt, "precision": precision,
                  "inputs": self.inputs, "opset": self.opset, "verified": self.verify, "layout": ARTIFACT_LAYOUT}
        if precision == "int8-static":
            source["calibration_images"] = self.calibration_images
        if fmt == "openvino":
            source["toolchain"] = tool_versions()
        if fmt in ("tensorrt", "torch-tensorrt"):
            import torch

            source["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
            source["toolchain"] = tool_versions("tensorrt", "torch_tensorrt")
        return source

    def reusable(self, fmt: str, precision: str) -> Optional[dict[str, Any]]:
        """The previous entry when its source (weights, options) is unchanged and its files are
        those export wrote (`check_artifact`); otherwise None and the artifact is rebuilt."""
        entry = self.entries.get((fmt, precision))
        if self.force or entry is None or entry.get("source") != self.source(fmt, precision):
            return None
        try:
            check_artifact(self.run_dir, entry, self.previous)
        except (ArtifactError, FileNotFoundError) as exc:
            log.warning("rebuilding %s %s: %s", fmt, precision, exc)
            return None
        return entry

    def stale(self) -> list[str]:
        """Entries of the manifest not built from the current weights (kept, refused by bench and demo)."""
        return [f"{e['format']}/{e['precision']}" for e in self.entries.values()
                if (e.get("source") or {}).get("weights_sha256") != self.weights_sha256]

    def verify_artifact(self, predict, precision: str, label: str) -> dict[str, Any]:
        if not self.verify:
            return {"parity": None, "accuracy": None}
        reference = self.reference
        if precision == "int8-static":
            images = reference.val_images if reference.val_images is not None else self.calibration()
            reference = image_reference(self.model, images, list(reference.inputs))
        return {"parity": check_parity(predict, reference, precision, label),
                "accuracy": check_accuracy(predict, self.reference, precision, label)}

    def record(self, fmt: str, precision: str, final: Path, tmp: Path, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": fmt,
            "precision": precision,
            "path": final.relative_to(self.export_dir).as_posix(),
            "sha256": file_sha256(tmp),
            "bytes": tmp.stat().st_size,
            "inputs": self.inputs,
            **extra,
            "source": self.source(fmt, precision),
        }

    def build(self, fmt: str, precision: str) -> dict[str, Any]:
        reused = self.reusable(fmt, precision)
        if reused is not None:
            log.info("reusing %s %s (%s): weights and options unchanged", fmt, precision, reused["path"])
            self.reused.add((fmt, precision))
            return reused
        started = time.perf_counter()
        if fmt == "onnx":
            entry = self._onnx(precision)
        elif fmt == "openvino":
            entry = self._openvino(precision)
        elif fmt == "tensorrt":
            entry = self._tensorrt(precision)
        else:
            entry = self._torch_tensorrt(precision)
        entry["build_s"] = round(time.perf_counter() - started, 2)
        self.entries[(fmt, precision)] = entry
        self.write_manifest()
        return entry

    def _onnx(self, precision: str) -> dict[str, Any]:
        final = self.export_dir / ONNX_NAMES[precision]
        label = f"ONNX {precision} ({run_name(self.run_dir)})"
        extra: dict[str, Any] = {}
        with atomic_path(final) as tmp:
            if precision == "fp32":
                h = self.inputs["height"]
                export_onnx(self.model, tmp, sample_size=(h[0], h[0]), max_batch=self.inputs["batch"][2],
                            max_res=h[2], opset=self.opset)
                extra["rewrites"] = make_tensorrt_friendly(tmp, h[0], self.card.img_size)
                scopes = attention_scopes(tmp)  # before onnxslim, which drops the exporter's name scopes
                extra.update(self._slim_if_exact(tmp, label))
                extra["attention_nodes_marked"] = mark_attention_math(tmp, scopes)
            else:
                src = self.export_dir / ONNX_NAMES["fp32"]
                if precision == "fp16":
                    extra["fp32_attention_nodes"] = convert_fp16(src, tmp, self.card.attention)
                    extra["io_dtype"] = "float32"
                elif precision == "int8-static":
                    extra["quantization"] = quantize_static_int8(src, tmp, self.calibration(), INPUT_NAME)
                else:
                    quantize_int8(src, tmp)
            extra.update(self.verify_artifact(ort_predict(tmp), precision, label))
            extra.update(graph_info(tmp))
            if not precision.startswith("int8"):
                extra["tensorrt_check"] = check_tensorrt_compat(tmp).as_dict()
            extra["tool_versions"] = tool_versions()
            entry = self.record("onnx", precision, final, tmp, extra)
        return entry

    def _slim_if_exact(self, path: Path, label: str) -> dict[str, Any]:
        """Replace `path` by its onnxslim'd graph when that still passes fp32 parity."""
        if not self.verify:
            return {"optimized": None}
        slim = path.with_name(path.name + ".slim")
        try:
            slim_onnx(path, slim)
            check_parity(ort_predict(slim), self.reference, "fp32", label + " after onnxslim")
        except Exception as exc:  # noqa: BLE001 - a parity miss or optimiser crash only costs the optimisation
            slim.unlink(missing_ok=True)
            log.warning("onnxslim not applied, keeping the unoptimised graph: %s", exc)
            return {"optimized": None}
        os.replace(slim, path)
        return {"optimized": f"onnxslim {tool_versions()['onnxslim']}"}

    @functools.cache
    def calibration(self) -> np.ndarray:
        """Training images (eval transform, evenly spaced: `data.subset`) for int8 calibration."""
        from torch.utils.data import DataLoader

        from ..data import collate_skip_bad, subset

        if not self.card.data:
            raise ExportUnavailable(f"{self.run_dir} names no data set (model.json has no `data`): int8-static needs "
                                    "training images to calibrate on; export int8 (dynamic) instead")
        images = subset.validation_subset(self.card, self.calibration_images, split="train")
        return np.concatenate([x.numpy() for x, _, _ in DataLoader(images, batch_size=32, collate_fn=collate_skip_bad)
                               if len(x)]).astype(np.float32)

    def _openvino(self, precision: str) -> dict[str, Any]:
        """OpenVINO IR (xml + bin) converted from the verified ONNX graph of `precision`."""
        import openvino as ov

        onnx_entry = self.entries[("onnx", precision)]
        stem = "model.openvino" if precision == "fp32" else f"model.{precision}.openvino"
        final, final_bin = self.export_dir / f"{stem}.xml", self.export_dir / f"{stem}.bin"
        label = f"OpenVINO {precision} ({run_name(self.run_dir)})"
        with tempfile.TemporaryDirectory(dir=self.export_dir, prefix=f"{WORK_PREFIX}{os.getpid()}.") as work:
            xml = Path(work) / f"{stem}.xml"
            ov.save_model(ov.convert_model(self.export_dir / onnx_entry["path"]), xml, compress_to_fp16=False)
            runner = compiled_runner(xml, precision, self.card, ThreadPolicy(passive=True))
            extra = {**self.verify_artifact(runner, precision, label), "onnx": onnx_entry["path"],
                     "tool_versions": tool_versions()}
            del runner
            bin_sha, bin_bytes = file_sha256(xml.with_suffix(".bin")), xml.with_suffix(".bin").stat().st_size
            with atomic_path(final_bin) as tmp_bin:
                os.replace(xml.with_suffix(".bin"), tmp_bin)
            extra["weights_file"] = {"path": final_bin.name, "sha256": bin_sha, "bytes": bin_bytes}
            with atomic_path(final) as tmp:
                os.replace(xml, tmp)
                entry = self.record("openvino", precision, final, tmp, extra)
        entry["bytes"] += bin_bytes  # the artifact is the xml and its weights
        return entry

    def _tensorrt(self, precision: str) -> dict[str, Any]:
        from . import tensorrt as trt_export

        onnx_entry = self.entries[("onnx", "fp16" if precision == "fp16" else "fp32")]
        onnx_path = self.export_dir / onnx_entry["path"]
        require_tensorrt_compat(onnx_path)
        final = self.export_dir / trt_export.engine_filename(precision)
        label = f"TensorRT {precision} ({run_name(self.run_dir)})"
        with atomic_path(final) as tmp:
            info = trt_export.build_engine(onnx_path, tmp, precision, self.inputs, self.export_dir / "trt_cache")
            entry = {"format": "tensorrt", "precision": precision, "inputs": self.inputs, **info}
            runner = load_engine_runner(tmp, entry, self.card, precision)
            extra = {**info, **self.verify_artifact(runner, precision, label),
                     "onnx": onnx_entry["path"], "tool_versions": tool_versions("tensorrt")}
            entry = self.record("tensorrt", precision, final, tmp, extra)
        return entry

    def _torch_tensorrt(self, precision: str) -> dict[str, Any]:
        from . import torch_tensorrt as tt_export

        final = self.export_dir / f"model.{precision}.torch_trt.ep"
        label = f"Torch-TensorRT {precision} ({run_name(self.run_dir)})"
        with atomic_path(final) as tmp:
            info = tt_export.compile_and_save(self.model, tmp, precision, self.inputs)
            entry = {"format": "torch-tensorrt", "precision": precision, "inputs": self.inputs, **info}
            runner = load_torch_tensorrt_runner(tmp, entry, self.card, precision)
            extra = {**info, **self.verify_artifact(runner, precision, label),
                     "tool_versions": tool_versions("tensorrt", "torch_tensorrt")}
            entry = self.record("torch-tensorrt", precision, final, tmp, extra)
        return entry

    def manifest(self) -> dict[str, Any]:
        card = self.card
        ref = self._reference
        return {
            "run": run_name(self.run_dir),
            "model": card.model,
            "attention": card.attention,
            "num_classes": card.num_classes,
            "class_names": card.class_names,
            "mean": list(card.mean),
            "std": list(card.std),
            "interpolation": card.interpolation,
            "crop_pct": card.crop_pct,
            "img_size": card.img_size,
            "patch_size": card.patch_size,
            "weights_sha256": self.weights_sha256,
            "run_state": run_state(self.run_dir),
            "torch_val_top1": ref.val_top1 if ref is not None else self.previous.get("torch_val_top1"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tool_versions": tool_versions(),
            "artifacts": list(self.entries.values()),
        }

    def write_manifest(self) -> dict[str, Any]:
        manifest = self.manifest()
        write_json(self.export_dir / MANIFEST, manifest)
        return manifest


def export_run(
    run_dir: Union[str, Path],
    formats: Sequence[str] = ("onnx",),
    precisions: Sequence[str] = ("fp32",),
    *,
    min_res: Optional[int] = None,
    opt_res: Optional[int] = None,
    max_res: int = 1024,
    max_batch: int = 32,
    int8: bool = False,
    verify: bool = True,
    force: bool = False,
    opset: int = DEFAULT_OPSET,
    eval_limit: int = 1000,
) -> dict[str, Any]:
    """Export, verify and record artifacts of `run_dir`; returns the manifest written.

    min_res defaults to the run's training size (the card's img_size) and opt_res to min_res.
    `eval_limit` caps the validation images used for the accuracy figures (0 skips them).
    Raises ExportUnavailable before any work when a GPU format cannot be built here, ValueError
    for bad options and ParityError when an artifact fails verification.
    """
    run_dir = Path(run_dir)
    formats = formats.split(",") if isinstance(formats, str) else formats
    precisions = precisions.split(",") if isinstance(precisions, str) else precisions
    plan = _plan(formats, precisions, int8)
    _check_available({fmt for fmt, _ in plan})
    inputs = _resolve_profile(load_model_card(run_dir), min_res, opt_res, max_res, max_batch)
    exporter = _Exporter(run_dir, inputs, opset, verify, force, eval_limit)
    note = unfinished_note(run_dir)
    if note:
        log.warning("%s; exporting it anyway (recorded as run_state in the manifest)", note)
    for stale in [*remove_stale_temps(exporter.export_dir), *remove_stale_work(exporter.export_dir)]:
        log.warning("removed %s, left by a killed export", stale)
    for fmt, precision in plan:
        if precision == "int8-static" and precision not in precisions and not exporter.card.data:
            log.warning("%s: no data set to calibrate on, int8-static skipped (dynamic int8 built)", run_dir)
            continue
        exporter.build(fmt, precision)
    manifest = exporter.write_manifest()
    stale = exporter.stale()
    if stale:
        log.warning("%s: %s were exported from earlier weights and will be refused by bench and demo: rebuild them "
                    "with --formats/--precision", run_dir, ", ".join(stale))
    manifest["reused"] = [f"{fmt}/{precision}" for fmt, precision in sorted(exporter.reused)]
    return manifest
