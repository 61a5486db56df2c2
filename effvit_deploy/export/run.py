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

Each format is a `Format` record in its own module (onnx.py, openvino.py, tensorrt.py,
torch_tensorrt.py: its builder, the artifacts it is built from, the backend that runs it); this
module plans the build order, holds the state the builders share (`Exporter`) and writes the
manifest. Each artifact is written to a temporary name, verified against PyTorch fp32 through
its backend's `open` (`BACKENDS`; figures: verify.py) and only then renamed; a failed check raises ParityError with the figures and leaves nothing behind.
Re-running reuses an artifact whose weights hash and options are unchanged (unless `force`).
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..atomic import _writer_alive, remove_stale_temps, write_json
from ..backends import MANIFEST, ArtifactError, Runner, ThreadPolicy, check_artifact, file_sha256
from ..stamps import is_current
from ..runs import ModelCard, load_model_card, load_run, run_name, run_state, unfinished_note, weights_path
from .format import ExportUnavailable, Format, tool_versions
from .onnx import DEFAULT_OPSET, ONNX
from .openvino import OPENVINO, WORK_PREFIX
from .tensorrt import TENSORRT
from .torch_tensorrt import TORCH_TENSORRT
from .verify import Reference, build_reference, check_accuracy, check_parity, image_reference, parity_resolutions

log = logging.getLogger(__name__)

# One record per format (export/<format>.py), in the order `--formats` lists them.
FORMATS: dict[str, Format] = {f.name: f for f in (ONNX, OPENVINO, TENSORRT, TORCH_TENSORRT)}
PRECISIONS: dict[str, tuple[str, ...]] = {name: f.precisions for name, f in FORMATS.items()}
CALIBRATION_IMAGES = 64
# Bumped when the graphs' contents change for the same options (2: attention-math nodes marked
# for fp16), so artifacts of an older effvit-deploy are rebuilt, not reused.
ARTIFACT_LAYOUT = 2


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


def _check_available(formats: Sequence[str]) -> None:
    for fmt in formats:
        reason = FORMATS[fmt].unavailable()
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
            if prec in PRECISIONS[fmt]:
                plan += [*FORMATS[fmt].sources(prec), (fmt, prec)]
    if int8:
        plan += [("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int8-static")]
        if "openvino" in formats:
            plan.append(("openvino", "int8-static"))
    return list(dict.fromkeys(plan))


class Exporter:
    """Builds, verifies and records artifacts for one run; the state every format's `build`
    shares (model, card, input profile, PyTorch reference, manifest entries so far)."""

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
        source.update(FORMATS[fmt].stamp())
        return source

    def reusable(self, fmt: str, precision: str) -> Optional[dict[str, Any]]:
        """The previous entry when its source (weights, options) is unchanged and its files are
        those export wrote (`check_artifact`); otherwise None and the artifact is rebuilt."""
        entry = self.entries.get((fmt, precision))
        if self.force or entry is None or not is_current(entry.get("source"), self.source(fmt, precision)):
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

    def label(self, kind: str, precision: str) -> str:
        """How messages name an artifact: 'ONNX fp16 (digits-exact)'."""
        return f"{kind} {precision} ({run_name(self.run_dir)})"

    def runner(self, fmt: str, path: Path, entry: dict[str, Any]) -> Runner:
        """The artifact at `path` (maybe not yet in the manifest) opened by the backend that
        runs `fmt` (`BACKENDS`), with passive threads: verification, not timing."""
        return FORMATS[fmt].runtime.open(Path(path), entry, self.card, ThreadPolicy(passive=True))

    def check_parity(self, predict, precision: str, label: str) -> dict[str, Any]:
        """`verify.check_parity` against this run's reference (raises ParityError)."""
        return check_parity(predict, self.reference, precision, label)

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
        entry = FORMATS[fmt].build(self, precision)
        entry["build_s"] = round(time.perf_counter() - started, 2)
        self.entries[(fmt, precision)] = entry
        self.write_manifest()
        return entry

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
    exporter = Exporter(run_dir, inputs, opset, verify, force, eval_limit)
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
