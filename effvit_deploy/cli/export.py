"""`effvit-export`: lower trained runs to ONNX / TensorRT / Torch-TensorRT, verified against PyTorch."""
from __future__ import annotations

import argparse
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from ..export import FORMATS, ExportUnavailable, ParityError, TensorRTIncompatible, check_tensorrt_compat, export_run
from ..export.precision import Fp16Unsafe
from .errors import EXIT_RUNTIME, Parser, existing_dir, existing_file, exit_code, one_line, require, run_cli
from .options import parse_with_config

EPILOG = """examples:
  effvit-export runs/digits-exact                              # ONNX fp32, verified
  effvit-export runs/digits-* --precision fp32,fp16 --int8      # + fp16 and int8 ONNX
  effvit-export runs/digits-* --formats onnx,openvino --int8     # + OpenVINO IR, calibrated int8
  effvit-export runs/in100-performer --formats onnx,tensorrt --precision fp16 \\
      --min-res 224 --opt-res 384 --max-res 1024 --max-batch 32  # engine (NVIDIA GPU)
  effvit-export runs/digits-exact --check-tensorrt              # will TensorRT parse it? (no GPU needed)
  effvit-export model.onnx --check-tensorrt                     # any ONNX file
  effvit-export runs/x --config export/tensorrt.yaml            # options from a profile
artifacts and export/manifest.json go to RUN_DIR/export/; then: effvit-bench RUN_DIR
"""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# export_run's keyword defaults are the command's defaults (option -> parameter where they differ).
_DEFAULTS = {name: p.default for name, p in inspect.signature(export_run).parameters.items() if p.default is not p.empty}
_PARAMETER = {"precision": "precisions"}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="effvit-export", description=__doc__, epilog=EPILOG)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run directories (or .onnx files with --check-tensorrt)")
    p.add_argument("--config", help="YAML export profile (keys as the long options, e.g. formats: [onnx]); flags override it")
    p.add_argument("--formats", type=_csv, help=f"comma list of {', '.join(FORMATS)} (default: {','.join(_DEFAULTS['formats'])})")
    p.add_argument("--precision", type=_csv, help="comma list of fp32, fp16, bf16, int8, int8-static (default: "
                   f"{','.join(_DEFAULTS['precisions'])}); each format builds those it has")
    p.add_argument("--int8", action="store_true", help="also int8 ONNX graphs (CPU): dynamic, and static QDQ calibrated on the run's training images")
    p.add_argument("--min-res", type=int, help="smallest input side (default: the run's training size)")
    p.add_argument("--opt-res", type=int, help="side TensorRT optimises for (default: min-res)")
    p.add_argument("--max-res", type=int, help="largest input side (default: %(default)s)")
    p.add_argument("--max-batch", type=int, help="largest batch (default: %(default)s)")
    p.add_argument("--eval-limit", type=int, help="validation images for accuracy figures (default: %(default)s; 0 skips)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip parity and accuracy checks (not recommended)")
    p.add_argument("--force", action="store_true", help="rebuild artifacts even when unchanged")
    p.add_argument("--check-tensorrt", action="store_true",
                   help="check every ONNX graph against the TensorRT parser's operator list; fail naming the op")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    p.set_defaults(**{a.dest: _DEFAULTS[_PARAMETER.get(a.dest, a.dest)] for a in p._actions
                      if _PARAMETER.get(a.dest, a.dest) in _DEFAULTS})
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """export_run's keyword arguments from the parsed options, checked."""
    opts = {_PARAMETER.get(key, key): getattr(args, key) for key in vars(args) if _PARAMETER.get(key, key) in _DEFAULTS}
    opts["formats"], opts["precisions"] = tuple(opts["formats"]), tuple(opts["precisions"])
    _check(opts)
    return opts


def _check(opts: dict[str, Any]) -> None:
    """Every option before any run is touched (the same checks export_run makes, named as options)."""
    from ..export.run import _plan

    require(bool(opts["formats"]), "--formats", f"is empty: give a comma list of {', '.join(FORMATS)}")
    require(bool(opts["precisions"]), "--precision", "is empty: give e.g. fp32 or fp32,fp16")
    for option, key, low in (("--max-batch", "max_batch", 1), ("--eval-limit", "eval_limit", 0), ("--min-res", "min_res", 1),
                             ("--opt-res", "opt_res", 1), ("--max-res", "max_res", 1)):
        value = opts[key]
        require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= low), option,
                f"must be an integer >= {low}, got {value!r}")
    try:
        _plan(opts["formats"], opts["precisions"], opts["int8"])
    except ValueError as exc:
        raise ValueError(f"--formats/--precision: {exc}") from None


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(manifest: dict[str, Any]) -> None:
    reused = set(manifest.get("reused", []))
    print(f"{manifest['run']} ({manifest['model']}, {manifest['attention']}): val top-1 PyTorch fp32 "
          f"{_fmt(manifest.get('torch_val_top1'), '.4f')}")
    header = f"  {'format':<15}{'prec':<12}{'MiB':>8}  {'max abs err':>11}  {'rel err':>8}  {'top-1':>7}  {'agree':>7}  {'TRT ok':>6}  path"
    print(header)
    for a in manifest["artifacts"]:
        parity = {k: v for k, v in (a.get("parity") or {}).items() if k != "tolerance"}
        worst_abs = max((v["max_abs"] for v in parity.values()), default=None)
        worst_rel = max((v["rel"] for v in parity.values()), default=None)
        acc = a.get("accuracy") or {}
        trt = a.get("tensorrt_check")
        trt_ok = "-" if trt is None else ("yes" if trt["ok"] else "NO")
        tag = " (reused)" if f"{a['format']}/{a['precision']}" in reused else ""
        print(f"  {a['format']:<15}{a['precision']:<12}{a['bytes'] / 2**20:>8.1f}  {_fmt(worst_abs, '.2e'):>11}  "
              f"{_fmt(worst_rel, '.1e'):>8}  {_fmt(acc.get('top1'), '.4f'):>7}  "
              f"{_fmt(acc.get('top1_agreement_vs_torch'), '.4f'):>7}  {trt_ok:>6}  {a['path']}{tag}")
    sizes = ", ".join(k for k in (manifest["artifacts"][0].get("parity") or {}) if k != "tolerance") if manifest["artifacts"] else ""
    if sizes:
        print(f"  parity vs PyTorch fp32 at {sizes} (worst shown); top-1/agree on the validation set")


def _check_tensorrt(targets: list[Path]) -> int:
    failed = 0
    for target in targets:
        graphs = [target] if target.suffix == ".onnx" else sorted((target / "export").glob("model*.onnx"))
        graphs = [g for g in graphs if ".int8" not in g.name]
        if not graphs:
            print(f"effvit-export: error: {target} has no ONNX graph to check: run `effvit-export {target}` first", file=sys.stderr)
            failed += 1
        for graph in graphs:
            report = check_tensorrt_compat(graph)
            print(report.summary())
            failed += not report.ok
    return 1 if failed else 0


def _export(target: Path, opts: dict[str, Any]) -> int:
    """Export one run; 0 on success, else the exit code of its error (one line, no traceback).
    A failed parity or TensorRT check is a runtime failure of that run (1), reported with its
    run so the other runs still export."""
    try:
        print_table(export_run(target, **opts))
    except (ParityError, TensorRTIncompatible, Fp16Unsafe) as exc:
        print(f"effvit-export: error: {target}: {one_line(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except ExportUnavailable:
        raise
    except (ValueError, OSError) as exc:
        print(f"effvit-export: error: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_with_config(build_parser(), argv, "formats: [onnx]")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return run_cli("effvit-export", lambda: _main(args), args.debug)


def _main(args: argparse.Namespace) -> int:
    targets = [Path(r) for r in args.runs]
    opts = _options(args)
    for target in targets:
        if target.suffix == ".onnx" and not args.check_tensorrt:
            raise ValueError(f"{target} is an ONNX file: pass run directories, or add --check-tensorrt to check it")
        if target.suffix == ".onnx":
            existing_file("ONNX file", target)
        else:
            existing_dir("RUN_DIR", target, "a training run folder")
    code = 0
    for target in targets:
        if target.suffix != ".onnx":
            code = max(code, _export(target, opts))
    if args.check_tensorrt and code == 0:
        code = _check_tensorrt(targets)
    return code


if __name__ == "__main__":
    sys.exit(main())
