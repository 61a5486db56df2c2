"""The study's command line (`python -m effvit_deploy.pipeline`, effvit_deploy.cli.study): the
shared options path and exit codes of the other commands, one line naming the culprit."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from effvit_deploy.cli.options import parse_with_config
from effvit_deploy.cli.study import build_parser, main
from effvit_deploy.study import readme_table

ROOT = Path(__file__).resolve().parents[1]
STUDY_JSON = ROOT / "benchmarks" / "results" / "cluttered_study" / "study.json"


def test_python_dash_m_pipeline_runs_the_study_command():
    done = subprocess.run([sys.executable, "-m", "effvit_deploy.pipeline", "--readme-table", str(STUDY_JSON)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == readme_table(json.loads(STUDY_JSON.read_text())).strip()


def test_a_config_file_sets_the_options_and_flags_override_it(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("resolutions: [128, 192]\nprofile: cpu\neval-limit: 100\noverrides: [epochs=2, optim.lr=1e-3]\n")
    args = parse_with_config(build_parser(), ["--config", str(config)], "resolutions: [128]")
    assert (args.resolutions, args.profile, args.eval_limit) == ([128, 192], "cpu", 100)
    assert args.overrides == ["epochs=2", "optim.lr=1e-3"]
    args = parse_with_config(build_parser(), ["--config", str(config), "--resolutions", "64", "epochs=3"], "")
    assert args.resolutions == [64] and args.overrides == ["epochs=3"]


CASES = [
    ("unknown-profile", ["--profile", "tpu"], "--profile"),
    ("resolution-zero", ["--resolutions", "0,128"], "--resolutions"),
    ("resolution-text", ["--eval-resolutions", "128,big"], "--eval-resolutions"),
    ("eval-limit-zero", ["--eval-limit", "0"], "--eval-limit"),
    ("missing-recipe", ["--recipe", "{w}/nope.yaml"], "nope.yaml"),
    ("missing-pretrain-recipe", ["--pretrain-recipes", "{w}/a.yaml,{w}/nope.yaml"], "nope.yaml"),
    ("out-is-a-file", ["--out", "{w}/a.yaml"], "--out {w}/a.yaml is a file"),
    ("readme-table-not-json", ["--readme-table", "{w}/a.yaml"], "a.yaml is not JSON"),
    ("config-unknown-key", ["--config", "{w}/typo.yaml"], "colour"),
    ("unknown-recipe-key", ["--recipe", "{w}/a.yaml", "--pretrain-recipes", "{w}/a.yaml", "optim.lrr=1"], "optim.lrr"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_study_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    _, argv, culprit = case
    (tmp_path / "a.yaml").write_text("epochs: 1\n")
    (tmp_path / "typo.yaml").write_text("colour: blue\n")
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{w}", str(tmp_path)) for a in argv]
    before = sorted(tmp_path.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("python -m effvit_deploy.pipeline: error:") and "Traceback" not in err
    assert culprit.replace("{w}", str(tmp_path)) in lines[0], lines[0]
    assert sorted(tmp_path.rglob("*")) == before
