"""`python -m effvit_deploy.pipeline`: the main job behind `make demo`, the attention-swap study.

The study lives in `effvit_deploy.study` (run.py: profiles and stages; render.py: its tables),
its command line in `effvit_deploy.cli.study`; this module is the name `make demo` runs.
"""
import sys

from .cli.study import main

if __name__ == "__main__":
    sys.exit(main())
