"""Make docs/demo.png: start the real demo on the given runs (what `make demo` builds), classify
one example in headless Chromium, and save the page (the README shows it).

    python docs/make_screenshot.py runs/cluttered-{exact,linformer,performer,nystrom,atrous} --out docs/demo.png

Needs chromium (Debian: apt-get install chromium) and the `demo` and `test` extras (gradio,
playwright). Prints each variant's top-5 as the page showed it.
"""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from effvit_deploy.demo import launch  # noqa: E402
from effvit_deploy.demo.browser import classify_example  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--example", type=int, default=0, help="index of the example to classify")
    parser.add_argument("--gallery", default="examples-val",
                        help="examples-val (default: the runs' validation images) or examples (out of distribution)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("demo.png"))
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = launch(args.run_dirs, args.backend, port=port, block=False)
    try:
        labels = classify_example(url, args.example, screenshot=args.out, gallery=args.gallery)
    finally:
        app.close()
    for run, shown in zip(args.run_dirs, labels):
        print(f"{run}: " + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
