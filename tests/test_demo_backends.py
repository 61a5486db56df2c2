"""The demo's backend choice: the record's artifact and precision decide what is servable, and
`auto` falls back to the next backend when an artifact cannot be read."""
from __future__ import annotations

import logging

import pytest

from conftest import make_tiny_run
from effvit_deploy.backends import ArtifactError
from effvit_deploy.demo.predict import load_variant, servable_backends


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from effvit_deploy.export import export_run

    run = make_tiny_run(tmp_path_factory.mktemp("demo") / "run", "exact")
    export_run(run, formats=("onnx", "openvino"), max_res=64, max_batch=2, verify=False)
    return run


@pytest.mark.slow
def test_servable_backends_honour_precision(exported):
    assert servable_backends(exported) == ["openvino", "onnxruntime", "torch"]
    assert servable_backends(exported, "fp16") == ["torch"]  # no fp16 graph exported; PyTorch casts
    assert servable_backends(exported, "int8") == []


@pytest.mark.slow
def test_auto_falls_back_past_a_truncated_artifact(exported, tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    onnx_path, xml = run / "export" / "model.onnx", run / "export" / "model.openvino.xml"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        variant = load_variant(run, "auto")
    assert list(variant.runners) == ["openvino", "torch"]
    assert "not serving onnxruntime" in caplog.text and "not the file effvit-export wrote" in caplog.text
    xml.write_text(xml.read_text()[:200])
    assert list(load_variant(run, "auto").runners) == ["torch"]
    with pytest.raises(ArtifactError, match="not the file effvit-export wrote"):  # a damaged artifact: exit 2
        load_variant(run, "onnxruntime")
