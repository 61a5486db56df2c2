"""Export formats are records: each names the backend that runs and verifies its artifacts, and
export opens every artifact it builds through that backend in `BACKENDS`."""
from __future__ import annotations

import dataclasses

import pytest

from conftest import TINY_IMG, make_tiny_run
from effvit_deploy.backends import BACKENDS, backend_status
from effvit_deploy.export import FORMATS, PRECISIONS, export_run


def test_every_format_is_run_by_a_backend_that_opens_its_artifacts():
    for name, fmt in FORMATS.items():
        backend = BACKENDS[fmt.backend]
        assert backend.artifact == name, name
        assert backend.open is not None, f"{backend.name} cannot open a {name} artifact path"
        assert PRECISIONS[name] == fmt.precisions == backend.precisions, name


def test_every_format_builds_from_known_formats_and_precisions():
    for fmt in FORMATS.values():
        for precision in fmt.precisions:
            for source, source_precision in fmt.sources(precision):
                assert source_precision in FORMATS[source].precisions, (fmt.name, precision, source)


@pytest.mark.skipif(backend_status("openvino") is not None, reason=f"openvino unavailable: {backend_status('openvino')}")
def test_export_verifies_every_artifact_through_its_backend_in_BACKENDS(tmp_path, monkeypatch):
    opened: list[tuple[str, str, str]] = []
    for name in ("onnxruntime", "openvino"):
        real = BACKENDS[name]

        def spy(path, entry, card, policy, real=real):
            opened.append((real.name, entry["format"], entry["precision"]))
            return real.open(path, entry, card, policy)

        monkeypatch.setitem(BACKENDS, name, dataclasses.replace(real, open=spy))
    run = make_tiny_run(tmp_path / "run", "exact")
    manifest = export_run(run, formats=("onnx", "openvino"), precisions=("fp32",), max_res=TINY_IMG, max_batch=2,
                          eval_limit=0)
    built = {(a["format"], a["precision"]) for a in manifest["artifacts"]}
    assert built == {("onnx", "fp32"), ("openvino", "fp32")}
    assert {("onnxruntime", "onnx", "fp32"), ("openvino", "openvino", "fp32")} <= set(opened)
