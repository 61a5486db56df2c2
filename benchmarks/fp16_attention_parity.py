"""fp16 ONNX graphs of Performer and Nystrom with large q/k: the attention maths kept in fp32 (as
`effvit-export` does it) against the same graph converted without keeping it (what 0.3.0 did
after onnxslim had stripped the node names it looked for).

    python benchmarks/fp16_attention_parity.py [--scales 1,8,30] [--images 64]

For each mechanism and scale, a tiny untrained run (ViT-Tiny width, 2 blocks, 64 px, the test
suite's settings) has the q and k rows of every qkv projection multiplied by the scale (trained
models reach such norms), and is exported fp32 + fp16 by `export_run` (verification on). Reported:
the fp16 relative max logit error on the digits validation images (max |fp16 - fp32 PyTorch| /
max |fp32 PyTorch|, `image_parity`), the number of nodes kept fp32, whether export accepted the
graph (fp16 tolerance: 1e-2 relative on noise and on images), and the same error for the unmarked
conversion. Writes benchmarks/results/fp16_attention_parity.{md,json} with command, machine and
git commit.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_large_activation_run  # noqa: E402  (the tests' tiny run, q/k scaled)

from effvit_deploy.atomic import write_json, write_text  # noqa: E402
from effvit_deploy.environment import environment  # noqa: E402
from effvit_deploy.export import ParityError, export_run  # noqa: E402
from effvit_deploy.export.precision import FP32_OPS  # noqa: E402
from effvit_deploy.export.onnx import ort_predict  # noqa: E402
from effvit_deploy.export.verify import _torch_logits, load_validation  # noqa: E402
from effvit_deploy.runs import load_run  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _scaled_run(root: Path, attention: str, scale: float) -> Path:
    return make_large_activation_run(root / f"{attention}-x{scale:g}", attention, scale)


def _unmarked_error(run: Path, images: np.ndarray, reference: np.ndarray, work: Path) -> float:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(onnx.load(str(run / "export" / "model.onnx")), keep_io_types=True,
                                        op_block_list=FP32_OPS)
    onnx.save(half, str(work / "unmarked.onnx"))
    got = ort_predict(work / "unmarked.onnx")(images)
    return float(np.abs(got - reference).max() / np.abs(reference).max()) if np.isfinite(got).all() else float("nan")


def measure(attention: str, scale: float, n_images: int, work: Path) -> dict:
    run = _scaled_run(work, attention, scale)
    model, card = load_run(run)
    images, _ = load_validation(card, n_images, card.img_size)
    reference = _torch_logits(model, images)
    row = {"attention": attention, "scale": scale, "images": int(len(images))}
    try:
        manifest = export_run(run, precisions=["fp32", "fp16"], eval_limit=n_images, max_res=128)
        fp16 = manifest["artifacts"][1]
        row.update(accepted=True, kept_fp32=fp16["fp32_attention_nodes"], rel=fp16["accuracy"]["image_parity"]["rel"])
    except ParityError as exc:
        row.update(accepted=False, kept_fp32=None, rel=None, reason=" ".join(str(exc).split())[:200])
    row["unmarked_rel"] = _unmarked_error(run, images, reference, work)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,8,30", help="q/k scales (comma list)")
    parser.add_argument("--images", type=int, default=64, help="validation images")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attention in ("performer", "nystrom"):
            for scale in (float(s) for s in args.scales.split(",")):
                rows.append(measure(attention, scale, args.images, Path(tmp)))
                print(rows[-1], flush=True)
    env = environment()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
    lines = [
        "# fp16 ONNX: attention maths kept in fp32 vs not", "",
        f"`{command}`; commit {env['git_commit']}, onnxruntime {env.get('onnxruntime')}, {env['cpu_model']}.", "",
        "Relative max logit error of the fp16 graph against PyTorch fp32 on the digits validation images; "
        "tolerance 1e-2. *kept*: the exported fp16 graph (attention nodes fp32, no fp16 round trip between "
        "them); *unmarked*: the same fp32 graph converted with only the op list kept fp32 (0.3.0's result).", "",
        "| mechanism | q/k scale | images | export | kept fp32 nodes | rel. error, kept | rel. error, unmarked |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "written" if r["accepted"] else "refused (ParityError)"
        lines.append(f"| {r['attention']} | {r['scale']:g} | {r['images']} | {verdict} | {r['kept_fp32'] or '-'} | "
                     f"{fmt(r['rel'])} | {fmt(r['unmarked_rel'])} |")
    refused = [r for r in rows if not r["accepted"]]
    if refused:
        lines += ["", "Refused: " + "; ".join(f"{r['attention']} x{r['scale']:g}: {r['reason']}" for r in refused)]
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "fp16_attention_parity.json", {"command": command, "environment": env, "rows": rows})
    write_text(RESULTS / "fp16_attention_parity.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
