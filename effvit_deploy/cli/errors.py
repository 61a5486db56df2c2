"""How the command-line tools (effvit-data, -train, -export, -bench, -demo and the study) fail: one
line naming the file or key, the problem and the fix, and the same exit codes everywhere; the
traceback only with `--debug` or EFFVIT_DEBUG=1.

Exit codes:
    0    success
    1    the work ran and failed (a parity or compatibility check, a port in use, an internal error)
    2    the input is wrong: arguments, recipe, config value, data, checkpoint or weights file
    3    a backend or toolchain this needs cannot run here (TensorRT, CUDA, a missing runtime)
    130  interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Union

from ..backends import BackendUnavailable

EXIT_RUNTIME, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 1, 2, 3, 130
DEBUG_ENV = "EFFVIT_DEBUG"
# Errors whose message is written for the user; anything else is a bug and says so.
USER_ERRORS = (ValueError, OSError, RuntimeError, EOFError)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (instead of the usage block) and a `--debug` flag."""

    def __init__(self, *args: Any, debug_flag: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        if debug_flag:
            self.add_argument("--debug", action="store_true",
                              help=f"print the full traceback of an error (or set {DEBUG_ENV}=1)")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def existing_file(option: str, path: Union[str, Path]) -> Path:
    """`path` when it is a file; else FileNotFoundError/IsADirectoryError naming `option` and the kind found."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder, expected a file")
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path} does not exist")
    return path


def existing_dir(option: str, path: Union[str, Path], expected: str = "a folder") -> Path:
    """`path` when it is a folder; else FileNotFoundError/NotADirectoryError naming `option`."""
    path = Path(path)
    if path.is_file():
        raise NotADirectoryError(f"{option} {path} is a file, expected {expected}")
    if not path.is_dir():
        raise FileNotFoundError(f"{option} {path} does not exist")
    return path


def output_dir(option: str, path: Union[str, Path]) -> Path:
    """`path` when it is a folder or can be created as one (nothing is created here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file, expected a folder to write into")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(f"{option} {path}: {parent} is a file, expected a folder")
    return path


def require(ok: bool, option: str, message: str) -> None:
    """Raise ValueError `"{option}: {message}"` (exit 2) unless `ok`."""
    if not ok:
        raise ValueError(f"{option} {message}")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (torch and PIL messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, BackendUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, EOFError)):
        return EXIT_USAGE
    return EXIT_RUNTIME


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


# What to lower when a command runs out of memory (training names its own knobs: train.run.OutOfMemory).
OOM_HINTS = {
    "effvit-export": "lower --max-batch or --max-res (the profile the graph is built and verified for)",
    "effvit-bench": "lower --batch-sizes or --resolutions, or set --memory-cap to skip what does not fit",
    "effvit-demo": "lower --max-pixels or --concurrency",
}


def run_cli(prog: str, body: Callable[[], int], debug: bool = False) -> int:
    """Run a command's body; turn any exception into one line on stderr and its exit code."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one place a command's failures are reported
        from ..train.run import OutOfMemory, is_out_of_memory

        if debug_requested(debug):
            traceback.print_exc()
        if is_out_of_memory(exc) and not isinstance(exc, OutOfMemory):
            hint = OOM_HINTS.get(prog.split()[0], "lower the batch size or resolution")
            print(f"{prog}: error: out of memory ({one_line(exc)[:120]}): {hint}", file=sys.stderr)
            return EXIT_RUNTIME
        if isinstance(exc, USER_ERRORS):
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        else:
            print(f"{prog}: internal error ({type(exc).__name__}: {one_line(exc)}); rerun with --debug "
                  "and report the traceback", file=sys.stderr)
        return exit_code(exc)
