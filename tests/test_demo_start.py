"""`effvit-demo` says what it is loading before its slow imports (torch, gradio, the runs)."""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_demo_prints_what_it_loads_within_two_seconds(tmp_path):
    run = tmp_path / "runs" / "cluttered-exact"
    run.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "effvit_deploy.cli.demo_start", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        first = proc.stdout.readline()
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert "effvit-demo: starting" in first and str(run) in first
    assert elapsed < 2.0, f"first line after {elapsed:.1f} s"


def test_importing_the_package_does_not_import_torch():
    code = "import sys, effvit_deploy, effvit_deploy.cli.demo_start; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "False"
