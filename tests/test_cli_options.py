"""`cli.options`: one options path (YAML file -> defaults, flags override, one key check) for
effvit-export and effvit-bench."""
from __future__ import annotations

import inspect

import pytest

from effvit_deploy.cli import export as export_cli
from effvit_deploy.cli.bench import parse_args as bench_args
from effvit_deploy.cli.options import parse_with_config
from effvit_deploy.export import export_run


def _export_options(argv):
    return export_cli._options(parse_with_config(export_cli.build_parser(), argv, "formats: [onnx]"))


def test_export_defaults_are_export_runs_own():
    opts = _export_options(["run"])
    defaults = {k: p.default for k, p in inspect.signature(export_run).parameters.items()}
    assert opts == {k: defaults[k] for k in opts}
    assert set(opts) >= {"formats", "precisions", "max_res", "max_batch", "eval_limit", "verify", "force", "int8"}


def test_a_profile_value_means_what_the_flag_means_and_flags_override_it(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("formats: [onnx, openvino]\nmax-res: 512\nint8: true\n")
    from_file = _export_options(["run", "--config", str(profile)])
    from_flags = _export_options(["run", "--formats", "onnx,openvino", "--max-res", "512", "--int8"])
    assert from_file == from_flags
    assert _export_options(["run", "--config", str(profile), "--max-res", "256"])["max_res"] == 256


@pytest.mark.parametrize("parse", [lambda a: _export_options(["run", *a]), bench_args], ids=["export", "bench"])
def test_an_unknown_key_is_a_usage_error_naming_it(tmp_path, parse, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: blue\n")
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "colour" in err and str(bad) in err and "\n" not in err.strip()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"epochs: [1, 2\n", b"- 224\n", b"colour: blue\n"],
                         ids=["not-text", "not-yaml", "not-a-mapping", "unknown-key"])
@pytest.mark.parametrize("command", ["train", "export", "bench", "study"])
def test_every_command_reads_its_yaml_file_through_one_reader(command, content, tmp_path, capsys, monkeypatch):
    """The same bad file is the same one-line usage error (exit 2, naming the file) whether it is
    effvit-train's recipe or the --config of effvit-export, effvit-bench or the study."""
    from effvit_deploy.cli import bench, export, study, train

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    argv = {"train": ["--config", str(bad), "--out", str(tmp_path / "runs")], "export": ["run", "--config", str(bad)],
            "bench": ["--config", str(bad)], "study": ["--config", str(bad)]}[command]
    try:
        code = {"train": train, "export": export, "bench": bench, "study": study}[command].main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(bad) in lines[0] and ": error: " in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
