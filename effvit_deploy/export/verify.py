"""Verification of exported artifacts against the PyTorch fp32 model.

Two checks, both recorded in the manifest:

- parity: logits of the artifact vs PyTorch fp32 on the same seeded random batch (real images
  for a calibrated int8 graph: `image_reference`) at three or more resolutions (the profile's min and opt squares and a non-square size inside the range):
  max absolute error, relative error (max abs error / max abs reference logit) and top-1
  agreement. An artifact outside `TOLERANCES` fails the export.
- accuracy: top-1 on the run's validation subset (`evaluation.validation_batches`, scored by
  `evaluation.top1_of_logits` as every top-1 is) and top-1 agreement with PyTorch fp32 on the
  same images: the accuracy delta of a precision.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation import top1_of_logits, validation_batches
from ..runs import ModelCard
from .resample import portable_resampling

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]

# Logit tolerances vs PyTorch fp32. fp32: max abs error (export is exact up to summation order).
# Reduced precisions: relative error (max abs error / max abs logit); their real gate is the
# top-1 agreement recorded from the validation set.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-4},
    "fp16": {"rel": 1e-2},
    "bf16": {"rel": 4e-2},
    "int8": {"rel": 0.15},
    "int8-static": {"rel": 0.15},
}
PARITY_BATCH = 2
# Precisions whose tolerance is also enforced on the validation images' logits.
IMAGE_GATED = ("fp16", "bf16")


class ParityError(RuntimeError):
    """An artifact's logits differ from PyTorch fp32 beyond the precision's tolerance."""


def round_to_patch(size: float, patch: int) -> int:
    return max(patch, int(round(size / patch)) * patch)


def parity_resolutions(min_res: int, opt_res: int, max_res: int, patch: int) -> list[tuple[int, int]]:
    """(H, W) sizes verified: min and opt squares, a non-square size inside [min, max], and a
    larger square when opt == min, so at least three sizes whenever the range allows it."""
    wide = min(max_res, round_to_patch(1.5 * min_res, patch))
    if wide == min_res:
        wide = min(max_res, min_res + patch)
    sizes = [(min_res, min_res), (opt_res, opt_res), (min_res, wide)]
    if opt_res == min_res:
        big = min(max_res, round_to_patch(2 * min_res, patch))
        sizes.append((big, big))
    sizes = list(dict.fromkeys(sizes))
    if len(sizes) < 3:
        log.warning("profile %d..%d is too narrow for three sizes; parity is checked at %s", min_res, max_res, sizes)
    return sizes


@dataclass
class Reference:
    """PyTorch fp32 logits for the parity batches and the validation set, computed once per run."""

    inputs: dict[tuple[int, int], np.ndarray]
    logits: dict[tuple[int, int], np.ndarray]
    val_images: Optional[np.ndarray] = None
    val_labels: Optional[np.ndarray] = None
    val_logits: Optional[np.ndarray] = None
    val_note: str = ""

    @property
    def val_top1(self) -> Optional[float]:
        """PyTorch fp32 top-1 on the validation images (`evaluation.top1_of_logits`); None without
        them or when its logits are not finite (not a number to record)."""
        if self.val_logits is None or not np.isfinite(self.val_logits).all():
            return None
        return top1_of_logits(self.val_logits, self.val_labels).top1


@torch.inference_mode()
def _torch_logits(model: nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """PyTorch fp32 logits, with the position embedding resampled as the exported graphs do it.

    timm's fp32 `F.interpolate(bicubic, antialias=True)` is itself ~1e-6 (relative) away from
    the exact resampling that `resample.py` computes (which matches it in float64 to 1e-13);
    Nystrom's ill-conditioned pseudo-inverse amplifies that into logit differences near the fp32
    tolerance at large sizes, so the reference uses the exact resampling too.
    """
    with portable_resampling():
        outs = [model(torch.from_numpy(images[i:i + batch])).float().numpy() for i in range(0, len(images), batch)]
    return np.concatenate(outs)


def load_validation(card: ModelCard, limit: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation subset of `limit` images (`evaluation.validation_batches`) at the training
    resolution, resized to float32 NCHW at `size`, and labels: loaded once, scored for every artifact."""
    images, labels = [], []
    for x, y in validation_batches(card, limit, batch_size=64):
        images.append(x)
        labels.append(y)
    x = torch.cat(images)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.numpy().astype(np.float32), torch.cat(labels).numpy()


def build_reference(
    model: nn.Module, card: ModelCard, resolutions: list[tuple[int, int]], eval_size: int, eval_limit: int,
) -> Reference:
    """Seeded parity batches and their fp32 logits, and the validation set's fp32 logits."""
    generator = torch.Generator().manual_seed(0)
    inputs = {hw: torch.randn(PARITY_BATCH, 3, *hw, generator=generator).numpy() for hw in resolutions}
    ref = Reference(inputs, {hw: _torch_logits(model, x) for hw, x in inputs.items()})
    if eval_limit <= 0:
        ref.val_note = "validation skipped (eval_limit=0)"
        return ref
    try:
        ref.val_images, ref.val_labels = load_validation(card, eval_limit, eval_size)
    except (FileNotFoundError, ValueError, KeyError, TypeError, OSError) as exc:
        ref.val_note = f"validation set unavailable: {exc}"
        log.warning("%s; accuracy is not recorded", ref.val_note)
        return ref
    ref.val_logits = _torch_logits(model, ref.val_images)
    return ref


def image_reference(model: nn.Module, images: np.ndarray, resolutions: list[tuple[int, int]]) -> Reference:
    """Parity batches made of real images (resized to each resolution) and their fp32 logits.

    A statically quantised graph is calibrated for the activation ranges of real images; on
    unit-variance noise its activations leave those ranges and clip, which measures the input,
    not the artifact. Its parity is therefore checked on images, at the same resolutions.
    """
    x = torch.from_numpy(images[:PARITY_BATCH])
    inputs = {hw: F.interpolate(x, size=hw, mode="bicubic", align_corners=False).numpy() for hw in resolutions}
    return Reference(inputs, {hw: _torch_logits(model, v) for hw, v in inputs.items()})


def _batched(predict: Predict, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def require_finite(logits: np.ndarray, what: str, label: str) -> None:
    """Raise ParityError when `logits` hold a NaN or an infinity."""
    finite = np.isfinite(logits)
    if not finite.all():
        kinds = "/".join(k for k, m in (("NaN", np.isnan(logits)), ("inf", np.isinf(logits))) if m.any())
        rows = int((~finite).any(axis=tuple(range(1, logits.ndim))).sum()) if logits.ndim > 1 else int((~finite).sum())
        cause = ("the run's weights or the model diverged: retrain with a lower lr" if what.startswith("PyTorch")
                 else "the artifact overflows or underflows: export fp32, or report the mechanism")
        raise ParityError(f"{label}: {what} hold {kinds} in {rows} of {len(logits)} rows: {cause}. "
                          "No artifact was written.")


def check_parity(predict: Predict, ref: Reference, precision: str, label: str) -> dict[str, Any]:
    """Per-resolution errors of `predict` vs the reference; raises ParityError beyond tolerance
    or on any non-finite logit."""
    tol = TOLERANCES[precision]
    figures: dict[str, Any] = {}
    failures = []
    for (h, w), x in ref.inputs.items():
        expected = ref.logits[(h, w)]
        require_finite(expected, f"PyTorch fp32 logits at {h}x{w}", label)
        got = predict(x)
        require_finite(got, f"logits at {h}x{w}", label)
        max_abs = float(np.abs(got - expected).max())
        rel = max_abs / max(float(np.abs(expected).max()), 1e-12)
        agree = float((got.argmax(1) == expected.argmax(1)).mean())
        figures[f"{h}x{w}"] = {"max_abs": max_abs, "rel": rel, "top1_agree": agree}
        if _exceeds(tol, max_abs, rel):
            failures.append(f"{h}x{w}: max_abs={max_abs:.3g} rel={rel:.3g}")
    if failures:
        raise ParityError(
            f"{label} does not match PyTorch fp32 within the {precision} tolerance "
            f"({', '.join(f'{k} <= {v:g}' for k, v in tol.items())}): {'; '.join(failures)}. No artifact was written."
        )
    return {**figures, "tolerance": tol}


def _exceeds(tol: dict[str, float], max_abs: float, rel: float) -> bool:
    return ("max_abs" in tol and max_abs > tol["max_abs"]) or ("rel" in tol and rel > tol["rel"])


def check_accuracy(predict: Predict, ref: Reference, precision: str = "fp32", label: str = "artifact",
                   batch: int = 32) -> dict[str, Any]:
    """Top-1 on the validation set, top-1 agreement with PyTorch fp32 on the same images, and the
    logit error there (`image_parity`); raises ParityError on a non-finite logit, and for
    `IMAGE_GATED` precisions beyond their tolerance."""
    if ref.val_logits is None:
        if precision in IMAGE_GATED:
            log.warning("%s: parity checked on noise inputs only (%s)", label, ref.val_note)
        return {"top1": None, "top1_agreement_vs_torch": None, "n": 0, "note": ref.val_note}
    require_finite(ref.val_logits, "PyTorch fp32 logits on the validation images", label)
    logits = _batched(predict, ref.val_images, batch)
    require_finite(logits, "logits on the validation images", label)
    max_abs = float(np.abs(logits - ref.val_logits).max())
    rel = max_abs / max(float(np.abs(ref.val_logits).max()), 1e-12)
    tol = TOLERANCES[precision]
    if precision in IMAGE_GATED and _exceeds(tol, max_abs, rel):
        raise ParityError(
            f"{label} does not match PyTorch fp32 within the {precision} tolerance on {len(logits)} validation images "
            f"({', '.join(f'{k} <= {v:g}' for k, v in tol.items())}): max_abs={max_abs:.3g} rel={rel:.3g}. "
            "No artifact was written."
        )
    preds = logits.argmax(1)
    top1 = top1_of_logits(logits, ref.val_labels).top1
    return {
        "top1": top1,
        "top1_agreement_vs_torch": float((preds == ref.val_logits.argmax(1)).mean()),
        "torch_top1": ref.val_top1,
        "top1_delta_vs_torch": top1 - ref.val_top1,
        "n": int(len(preds)),
        "image_parity": {"max_abs": max_abs, "rel": rel, "gated": precision in IMAGE_GATED},
    }
