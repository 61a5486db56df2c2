"""`stamps.is_current`: the one check deciding whether an output is reused or rebuilt."""
from __future__ import annotations

from effvit_deploy.stamps import is_current, read_stamp, write_stamp


def test_an_output_is_current_only_while_its_stamp_is_unchanged(tmp_path):
    path = tmp_path / "stamp.json"
    stamp = {"weights_sha256": "ab", "max_res": 128}
    assert not is_current(path, stamp)  # never made
    write_stamp(path, stamp)
    assert is_current(path, stamp) and is_current(read_stamp(path), stamp)
    assert not is_current(path, {**stamp, "max_res": 256})


def test_a_corrupt_or_foreign_stamp_means_rebuild_not_a_crash(tmp_path):
    for text in ("{not json", "[1, 2]", ""):
        (tmp_path / "stamp.json").write_text(text)
        assert read_stamp(tmp_path / "stamp.json") is None
        assert not is_current(tmp_path / "stamp.json", {})
    assert not is_current(None, {})


def test_covers_lets_a_larger_output_serve_a_smaller_request_and_outputs_must_exist(tmp_path):
    write_stamp(tmp_path / "stamp.json", {"max_res": 256})
    covers = lambda done, wanted: done["max_res"] >= wanted["max_res"]  # noqa: E731
    assert is_current(tmp_path / "stamp.json", {"max_res": 128}, covers=covers)
    assert not is_current(tmp_path / "stamp.json", {"max_res": 512}, covers=covers)
    assert not is_current(tmp_path / "stamp.json", {"max_res": 128}, covers=covers, outputs=[tmp_path / "manifest.json"])
    (tmp_path / "manifest.json").write_text("{}")
    assert is_current(tmp_path / "stamp.json", {"max_res": 128}, covers=covers, outputs=[tmp_path / "manifest.json"])
