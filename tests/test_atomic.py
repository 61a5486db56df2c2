"""Atomic writes: a killed writer leaves only a hidden temp file, which the next start removes,
while a live writer's temp file is never touched."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from effvit_deploy.atomic import atomic_path, remove_stale_temps, write_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_temp_file_of_a_killed_writer_is_removed_and_a_live_ones_kept(tmp_path):
    write_text(tmp_path / "results.json", "old\n")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from effvit_deploy.atomic import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'results.json')!r}) as tmp:\n"
        "    tmp.write_text('half')\n    print('writing', flush=True)\n    time.sleep(60)\n"
    )], stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert writer.stdout.readline().strip() == "writing"
    (live,) = tmp_path.glob(".results.json.*.tmp")
    assert remove_stale_temps(tmp_path) == [] and live.exists()  # its writer is still running
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert (tmp_path / "results.json").read_text() == "old\n"  # the kill left the old file whole
    assert remove_stale_temps(tmp_path) == [live] and not live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failed_write_leaves_neither_temp_nor_target(tmp_path):
    try:
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
