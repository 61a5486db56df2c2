"""The `effvit-demo` entry point: says what it is loading at once, then starts the demo.

Importing torch, timm and gradio takes tens of seconds on a small or busy CPU, and loading the
runs more; without this line the server printed nothing for minutes. Everything heavy is
imported after the print (effvit_deploy.cli.demo does the work).
"""
from __future__ import annotations

import os
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not {"-h", "--help"} & set(args):
        runs = [a for a in args if os.path.isdir(a)]
        print(f"effvit-demo: starting; importing torch and gradio, then loading {len(runs)} run(s): "
              f"{', '.join(runs) or 'none given'} (a minute or more on a small CPU)", flush=True)
    from .demo import main as serve

    return serve(argv)


if __name__ == "__main__":
    raise SystemExit(main())
