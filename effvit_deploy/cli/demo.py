"""`effvit-demo`: a local web page that classifies one image with every attention variant."""
from __future__ import annotations

import argparse
import errno
import re
import socket
from pathlib import Path
from typing import Optional

from ..demo.app import DEFAULT_HOST, DEFAULT_MAX_FILE_SIZE, DEFAULT_PORT
from ..demo.inputs import DEFAULT_MAX_PIXELS
from ..demo.predict import AUTO, PRECISIONS, SERVABLE
from .errors import Parser, existing_dir, require, run_cli

EPILOG = """examples:
  effvit-demo runs/digits-*                       # every variant, fastest backend each, http://127.0.0.1:7860
  effvit-demo runs/exact runs/performer --backend onnxruntime --port 7861
  effvit-demo runs/digits-* --backend openvino --precision int8-static   # calibrated int8 on OpenVINO
  effvit-demo runs/* --host 0.0.0.0               # reachable from other machines (no share link)
the runs come from effvit-train; ONNX/TensorRT backends need `effvit-export RUN_DIR` first.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="effvit-demo", description=__doc__, epilog=EPILOG)
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="training run directories, one column each")
    p.add_argument("--backend", default=AUTO, choices=[AUTO, *SERVABLE],
                   help="auto (default): the fastest backend each run has an artifact for, falling back to torch")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="artifact precision (default fp32); int8-static: `effvit-export RUN --formats onnx,openvino --int8`")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS:,}; guards against decompression bombs)")
    p.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help=f"largest upload (default {DEFAULT_MAX_FILE_SIZE})")
    p.add_argument("--concurrency", type=int, default=1, help="requests served at once (default 1; others wait in the queue)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("effvit-demo", lambda: _serve(args), args.debug)


SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)


def check_address(host: str, port: int) -> None:
    """Refuse, before any model loads, a port out of range (2), a host this machine cannot bind
    (2, naming --host) and a port already in use (1, naming --port)."""
    require(1 <= port <= 65535, "--port", f"must be 1..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host} is not an address or host name ({err.strerror or err}): use 127.0.0.1 "
                         "(this machine) or 0.0.0.0 (every interface)") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise OSError(f"--port {port} is already in use on {host}: pick another --port") from None
            raise ValueError(f"--host {host} cannot be bound on this machine ({err.strerror}): use 127.0.0.1 or "
                             "0.0.0.0") from None


def _serve(args: argparse.Namespace) -> int:
    for run_dir in args.run_dirs:
        if run_dir.exists():  # missing ones are named together below
            existing_dir("RUN_DIR", run_dir, "a training run folder")
    missing = [str(d) for d in args.run_dirs if not (d / "model.json").is_file()]
    if missing:
        raise FileNotFoundError(f"not training run directories (no model.json): {', '.join(missing)}; "
                                "make them with effvit-train")
    require(args.max_pixels >= 1, "--max-pixels", f"must be positive, got {args.max_pixels}")
    require(args.concurrency >= 1, "--concurrency", f"must be positive, got {args.concurrency}")
    require(bool(SIZE.match(str(args.max_file_size))), "--max-file-size",
            f"{args.max_file_size!r} is not a size: use e.g. 25mb, 500kb or 1gb")
    check_address(args.host, args.port)
    from ..demo.app import launch

    try:
        launch(args.run_dirs, args.backend, precision=args.precision, host=args.host, port=args.port,
               share=args.share, max_pixels=args.max_pixels, max_file_size=args.max_file_size,
               concurrency_limit=args.concurrency)
    except OSError as err:
        if isinstance(err, (FileNotFoundError, NotADirectoryError)):
            raise
        raise OSError(f"cannot serve on {args.host}:{args.port} ({err}); pick another --port") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
