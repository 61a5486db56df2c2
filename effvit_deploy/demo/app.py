"""The Gradio Blocks page: one image in, one column per attention variant out.

Each column shows the variant's top-5 (`gr.Label`), the latency of that prediction and which
backend served it, the GFLOPs at the chosen resolution, its top-1 accuracy on the run's
validation split (with its image count and 95% interval), and a saliency overlay
(`saliency.py`). The page says what the models were trained on, and offers two sets of
examples: in distribution (the runs' own validation images, `examples.validation_examples`)
and out of distribution (the bundled plain digits and photos), labelled as such. The fastest variant of the request and the most
accurate variant of the runs are marked. Models are loaded once in `build_app`; requests go
through Gradio's queue with a concurrency limit (one at a time by default, so latencies are not
inflated by a neighbouring request) and a bounded queue length.

Safe defaults: `launch` binds to 127.0.0.1 and never opens a public share link unless asked.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import logging
import shlex
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import gradio as gr
import numpy as np
from PIL import Image

from ..atomic import write_bytes
from ..backends import BackendUnavailable
from . import saliency as sal
from ..evaluation import top1_text
from .examples import validation_examples
from .inputs import DEFAULT_MAX_PIXELS, InputError, load_image
from .predict import AUTO, AUTO_ORDER, Prediction, Variant, load_variants, resolution_choices

log = logging.getLogger(__name__)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None
if _LIBC is not None and not hasattr(_LIBC, "malloc_trim"):  # musl
    _LIBC = None

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "25mb"
# Gradio's cache (uploads, saliency PNGs): swept every 5 min of files older than 15 min.
DELETE_CACHE = (300, 900)
FASTEST = "⚡ fastest"
MOST_ACCURATE = "★ most accurate"
EXAMPLES = ("digit_0.png", "digit_3.png", "digit_7.png", "flower.jpg", "china.jpg")


def example_images() -> list[str]:
    """Paths of the bundled example images (effvit_deploy/assets)."""
    root = resources.files("effvit_deploy") / "assets"
    return [str(root / name) for name in EXAMPLES if (root / name).is_file()]


def _payload_path(payload: Any) -> Optional[str]:
    """The uploaded file's path from a raw gr.Image payload (FileData dict or a path)."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        return payload.get("path")
    return getattr(payload, "path", payload)


def _most_accurate(variants: Sequence[Variant]) -> set[str]:
    scores = {v.name: v.top1 for v in variants if v.top1 is not None}
    if not scores:
        return set()
    best = max(scores.values())
    return {name for name, score in scores.items() if score == best}


def _header(variant: Variant, fastest: bool, accurate: bool) -> str:
    badges = [b for b, on in ((FASTEST, fastest), (MOST_ACCURATE, accurate)) if on]
    return f"### {variant.name}" + (f"  \n**{' · '.join(badges)}**" if badges else "  \n&nbsp;")


def _accuracy_text(variant: Variant) -> str:
    """"top-1 0.951 [0.936, 0.962] on 1,000 validation images at 128 px" from the run's summary
    and the image count of its last validation pass (the whole split: `data.subset` with no limit)."""
    if variant.top1 is None:
        return "top-1: not measured"
    images = _val_images(variant.run_dir)
    if not images:
        return f"top-1 {variant.top1:.3f} (image count not recorded)"
    return f"top-1 {top1_text(variant.top1, images)} (validation, {variant.card.img_size} px)"


def _val_images(run_dir: Path) -> Optional[int]:
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]).get("val_images") if lines else None


def describe_training(variants: Sequence[Variant]) -> str:
    """One paragraph: what the served models were trained on, and each one's top-1."""
    card = variants[0].card
    data = dict(card.data or {})
    tokens = (card.img_size // card.patch_size) ** 2 if card.patch_size else None
    what = {
        "cluttered": ("cluttered digits: one handwritten digit (scikit-learn's 8x8 digits, drawn 16 px wide on the "
                      "8 px patch lattice) to find among fragments of other digits, on a black canvas"),
        "digits": "scikit-learn's 8x8 handwritten digits, upscaled",
        "synthetic": "synthetic noise images (a shape check, not a classifier)",
        "folder": f"the image folder {data.get('root')}",
    }.get(str(data.get("name")), str(data.get("name")))
    lines = [f"**Trained on** {what}, {card.img_size} px ({tokens} patch tokens), {len(card.class_names)} classes "
             f"({', '.join(card.class_names[:10])}{', ...' if len(card.class_names) > 10 else ''}). Anything else "
             "is out of distribution: the answers to the photos and plain digits below show what these models do "
             "outside what they learned, not how good they are."]
    lines += [f"- **{v.name}**: {_accuracy_text(v)}" for v in variants]
    return "\n".join(lines)


def _info(variant: Variant, pred: Prediction, resolution: int, note: str = "") -> str:
    run_gflops = variant.summary.get("gflops")
    if run_gflops is not None and resolution == variant.card.img_size:
        flops = f"GFLOPs: {float(run_gflops):.3g} at {resolution} px (run)"
    else:
        run_part = f" (run: {float(run_gflops):.3g} at {variant.card.img_size} px)" if run_gflops is not None else ""
        flops = f"GFLOPs: {variant.gflops(resolution):.3g} at {resolution} px{run_part}"
    lines = [
        f"**latency: {pred.latency_ms:.2f} ms** ({pred.backend}, {resolution} px)",
        flops,
        _accuracy_text(variant),
    ]
    if note:
        lines.append(f"_{note}_")
    return "  \n".join(lines)


def _cached_png(image: np.ndarray, cache_dir: Union[str, Path]) -> str:
    """`image` as a PNG in Gradio's cache, named by its content and written atomically.

    Handing Gradio the array instead makes it rewrite one shared file in place whenever two
    requests produce the same picture, while a third may be downloading it: that download comes
    up short (h11: "Too little data for declared Content-Length"). A file already in the cache is
    served as is, and `delete_cache` ages it out like Gradio's own.
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    data = buffer.getvalue()
    target = Path(cache_dir) / hashlib.sha256(data).hexdigest() / "saliency.png"
    if not target.is_file():
        write_bytes(target, data)
    return str(target)


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    A large upload decodes into tens of MB freed right after the request, but glibc keeps such
    blocks in per-thread arenas once its mmap threshold has adapted, so resident memory only
    grew over bursts of big uploads; trimming after each request returns it.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _saliency(variant: Variant, x, pred: Prediction, mode: str) -> tuple[Optional[np.ndarray], str]:
    if mode == sal.OFF:
        return None, ""
    if mode == sal.CLASS_TOKEN:
        heat = variant.with_model(lambda m: sal.class_token_attention(m, x))
        if heat is None:
            return None, f"{variant.attention} forms no attention matrix: pick '{sal.GRADIENT}'"
    else:
        heat = variant.with_model(lambda m: sal.gradient_x_input(m, x, pred.top_index))
    image = sal.to_image(x, variant.card.mean, variant.card.std)
    return sal.overlay(image, heat), ""


def build_app(
    run_dirs: Sequence[Union[str, Path]],
    backend: str = AUTO,
    *,
    precision: str = "fp32",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    concurrency_limit: int = 1,
    max_queue: int = 64,
    variants: Optional[Sequence[Variant]] = None,
) -> gr.Blocks:
    """The demo page for `run_dirs` (one column each), models loaded now for `backend`.

    `backend`: "auto" loads every backend each run can serve here (fastest first: TensorRT,
    ONNX Runtime CUDA, ONNX Runtime, PyTorch) and preselects "auto"; an explicit name loads that
    backend (and PyTorch, which saliency needs) and fails if a run cannot serve it. Pass already
    loaded `variants` to skip loading.
    """
    if variants is None:
        print(f"effvit-demo: loading {len(run_dirs)} run(s) for backend {backend} ({precision}): "
              + ", ".join(map(str, run_dirs)), flush=True)
    variants = list(variants) if variants is not None else load_variants(run_dirs, backend, precision)
    loaded = [b for b in AUTO_ORDER if any(b in v.runners for v in variants)]
    resolutions = resolution_choices([v.card for v in variants])
    # FLOPs of every choice now, not in a request: FlopCounterMode installs process-wide module
    # hooks, which broke a concurrent request's saliency backward pass in another model.
    for v in variants:
        for size in resolutions:
            v.gflops(size)
    default_res = max(v.card.img_size for v in variants)
    accurate = _most_accurate(variants)
    examples_dir = Path(tempfile.gettempdir()) / "effvit-demo-examples"
    in_distribution = validation_examples(variants[0].card, examples_dir) if variants[0].card.data else []
    backend_choices = [AUTO, *loaded]
    patch = variants[0].card.patch_size

    def classify(payload: Any, resolution: Any, backend_choice: Any, saliency_mode: Any):
        try:
            size = int(resolution)
        except (TypeError, ValueError):
            size = None
        if size not in resolutions:
            raise gr.Error(f"resolution must be one of {resolutions} (multiples of the patch size), got {resolution!r}")
        if backend_choice not in backend_choices:
            raise gr.Error(f"backend must be one of {backend_choices}, got {backend_choice!r}")
        if saliency_mode not in sal.MODES:
            raise gr.Error(f"saliency must be one of {list(sal.MODES)}, got {saliency_mode!r}")
        try:
            return answer(payload, size, backend_choice, saliency_mode)
        finally:
            release_memory()

    def answer(payload: Any, size: int, backend_choice: str, saliency_mode: str) -> list[Any]:
        try:
            image = load_image(_payload_path(payload), max_pixels)
        except InputError as err:
            raise gr.Error(str(err), title="Unusable input", print_exception=False) from None

        results: list[tuple[Variant, Optional[Prediction], Any, str]] = []
        for v in variants:
            try:
                x = v.preprocess(image, size)
                pred = v.predict(x, backend_choice)
                overlay, note = _saliency(v, x, pred, saliency_mode)
                overlay = _cached_png(overlay, demo.GRADIO_CACHE) if overlay is not None else None
                results.append((v, pred, overlay, _info(v, pred, size, note)))
            except BackendUnavailable as err:
                results.append((v, None, None, f"**failed:** {err}"))
            except Exception as err:  # one variant failing must not blank the others
                log.exception("%s failed", v.name)
                results.append((v, None, None, f"**failed:** {err}"))
        timed = [(p.latency_ms, v.name) for v, p, _, _ in results if p is not None]
        fastest = min(timed)[1] if timed else None
        outputs: list[Any] = []
        for v, pred, overlay, info in results:
            outputs += [_header(v, v.name == fastest, v.name in accurate), pred.labels if pred else None, info, overlay]
        ok = len(timed)
        status = f"{ok}/{len(variants)} variants answered at {size} px on {image.width}x{image.height} input."
        if fastest:
            status += f" Fastest: **{fastest}**."
        return [status, *outputs]

    with gr.Blocks(title="effvit-deploy: efficient attention side by side", analytics_enabled=False,
                   delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# Efficient ViT attention, side by side\n"
            "One image, every attention variant: top-5 classes, the latency of this prediction, "
            "GFLOPs and the run's top-1 accuracy, and where each model looked. "
            f"{FASTEST} marks the fastest answer of this request, {MOST_ACCURATE} the best run.\n\n"
            + describe_training(variants), elem_id="trained-on"
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 label="Image", elem_id="input-image", height=280)
                if in_distribution:
                    gr.Examples(examples=[[path] for _, path, _ in in_distribution], inputs=[image],
                                example_labels=[caption for _, _, caption in in_distribution],
                                label=f"In distribution: the runs' own validation images ({default_res} px)",
                                cache_examples=False, elem_id="examples-val")
                gr.Examples(examples=[[p] for p in example_images()], inputs=[image],
                            label="Out of distribution: plain digits and photos the models never saw anything like",
                            cache_examples=False, elem_id="examples")
            with gr.Column(scale=1, min_width=280):
                resolution = gr.Dropdown(resolutions, value=default_res, label=f"Resolution (px, multiple of the {patch} px patch)",
                                         elem_id="resolution")
                backend_box = gr.Dropdown(backend_choices, value=backend if backend in backend_choices else AUTO,
                                          label="Backend (auto: fastest loaded per variant)", elem_id="backend")
                saliency_box = gr.Radio(list(sal.MODES), value=sal.GRADIENT, label="Saliency", elem_id="saliency")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
                status = gr.Markdown(elem_id="status")
        outputs: list[gr.components.Component] = [status]
        with gr.Row(equal_height=False):
            for i, v in enumerate(variants):
                with gr.Column(min_width=180, elem_id=f"variant-{i}"):
                    outputs += [
                        gr.Markdown(_header(v, False, v.name in accurate), elem_id=f"header-{i}"),
                        gr.Label(num_top_classes=5, label=f"{v.name}: top-5", elem_id=f"label-{i}"),
                        gr.Markdown(_accuracy_text(v), elem_id=f"info-{i}"),
                        gr.Image(label=f"{v.name}: saliency", interactive=False, type="filepath", format="png",
                                 elem_id=f"saliency-{i}", height=200),
                    ]
        button.click(classify, inputs=[image, resolution, backend_box, saliency_box], outputs=outputs,
                     preprocess=False, api_name="classify", concurrency_limit=concurrency_limit)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    return demo


def command(run_dirs: Sequence[Union[str, Path]], backend: str = AUTO, port: int = DEFAULT_PORT) -> str:
    """The shell command that opens this demo (for a pipeline to print)."""
    args = ["effvit-demo", *map(str, run_dirs)]
    if backend != AUTO:
        args += ["--backend", backend]
    if port != DEFAULT_PORT:
        args += ["--port", str(port)]
    return shlex.join(args)


def launch(
    run_dirs: Sequence[Union[str, Path]],
    backend: str = AUTO,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    share: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_size: Union[str, int] = DEFAULT_MAX_FILE_SIZE,
    block: bool = True,
    **build_kwargs: Any,
) -> tuple[gr.Blocks, str]:
    """Build the app and serve it on host:port (localhost, no share link, by default).

    Returns (app, local URL); with `block=False` the server runs in a background thread and
    `app.close()` stops it.
    """
    app = build_app(run_dirs, backend, max_pixels=max_pixels, **build_kwargs)
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                           prevent_thread_lock=not block, quiet=not block, footer_links=["api"])
    return app, url
