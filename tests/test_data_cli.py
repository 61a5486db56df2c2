"""`effvit-data`: ImageNet-100 links from a fake ImageNet tree, bad-image check, digits PNGs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from effvit_deploy.cli.data import main
from effvit_deploy.data import DataSpec, build_datasets, read_class_list
from effvit_deploy.data.imagenet100 import DEFAULT_CLASS_FILE

from test_data_folder import HALF, make_folder, png_bytes

WNIDS = ["n01440764", "n01443537", "n01484850"]


def fake_imagenet(root: Path, extra: str = "n09999999") -> Path:
    """A tiny ImageNet-1k tree: the listed WNIDs plus one class not in the list."""
    per_split = {"train": 3, "val": 2}
    return make_folder(root, {split: {w: n for w in [*WNIDS, extra]} for split, n in per_split.items()})


def class_file(tmp_path: Path, wnids=WNIDS) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("# a test subset\n" + "\n".join(wnids) + "\n")
    return path


def test_shipped_class_list_is_the_100_cmc_wnids():
    wnids = read_class_list(DEFAULT_CLASS_FILE)
    assert len(wnids) == len(set(wnids)) == 100
    assert "HobbitLong/CMC" in DEFAULT_CLASS_FILE.read_text()


def test_imagenet100_links_listed_classes_and_reports_counts(tmp_path, capsys):
    imagenet, out = fake_imagenet(tmp_path / "imagenet"), tmp_path / "in100"
    args = ["imagenet100", "--imagenet", str(imagenet), "--out", str(out), "--classes", str(class_file(tmp_path))]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train: 3 classes, 9 images" in printed and "val: 3 classes, 6 images" in printed
    for split in ("train", "val"):
        assert sorted(os.listdir(out / split)) == WNIDS
        for w in WNIDS:
            assert (out / split / w).is_symlink()
            assert (out / split / w).resolve() == (imagenet / split / w).resolve()
    train, val, names = build_datasets(DataSpec("folder", root=str(out)), 16, HALF, HALF)
    assert names == WNIDS and (len(train), len(val)) == (9, 6)
    assert main(["check", str(out)]) == 0, "check follows the class links"
    assert "checked 15 images: 0 unreadable" in capsys.readouterr().out

    assert main(args) == 0, "re-running over existing links must succeed"
    assert "0 created, 6 kept" in capsys.readouterr().out


def test_imagenet100_rerun_with_a_smaller_list_drops_stale_links(tmp_path, capsys):
    imagenet, out = fake_imagenet(tmp_path / "imagenet"), tmp_path / "in100"
    base = ["imagenet100", "--imagenet", str(imagenet), "--out", str(out)]
    assert main([*base, "--classes", str(class_file(tmp_path))]) == 0
    (tmp_path / "two").mkdir()
    assert main([*base, "--classes", str(class_file(tmp_path / "two", WNIDS[:2]))]) == 0
    assert "2 stale removed" in capsys.readouterr().out
    assert sorted(os.listdir(out / "val")) == WNIDS[:2]


def test_imagenet100_names_missing_classes_and_writes_nothing(tmp_path, capsys):
    imagenet, out = fake_imagenet(tmp_path / "imagenet"), tmp_path / "in100"
    for f in (imagenet / "val" / WNIDS[1]).iterdir():
        f.unlink()
    missing = "n01000001"
    rc = main(["imagenet100", "--imagenet", str(imagenet), "--out", str(out),
               "--classes", str(class_file(tmp_path, [*WNIDS, missing]))])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"train/: 1 class(es) missing or without images: {missing}" in err
    assert f"val/: 2 class(es) missing or without images: {WNIDS[1]} {missing}" in err
    assert not out.exists()


def test_imagenet100_explains_a_flat_val_folder(tmp_path, capsys):
    imagenet = fake_imagenet(tmp_path / "imagenet")
    for d in (imagenet / "val").iterdir():
        for f in d.iterdir():
            f.rename(imagenet / "val" / f"{d.name}_{f.name}")
        d.rmdir()
    rc = main(["imagenet100", "--imagenet", str(imagenet), "--out", str(tmp_path / "o"),
               "--classes", str(class_file(tmp_path))])
    assert rc == 2 and "holds image files but no class folders" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_check_finds_a_corrupt_file(tmp_path, capsys, workers):
    root = make_folder(tmp_path / "d", {"train": {"a": 3}, "val": {"a": 1}})
    assert main(["check", str(root), "--workers", str(workers)]) == 0
    assert "checked 4 images: 0 unreadable" in capsys.readouterr().out
    good = png_bytes(7, size=64)
    (root / "val" / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "a" / "notes.txt").write_text("ignored")
    assert main(["check", str(root), "--workers", str(workers)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {root / 'val' / 'a' / 'cut.png'}" in out
    assert "checked 5 images: 1 unreadable, 4 ok; 1 other files ignored (IGNORED lines)" in out
    assert f"IGNORED {root / 'train' / 'a' / 'notes.txt'}: not an accepted image format" in out
    assert "train: 1 classes, 3 images" in out and "val: 1 classes, 2 images" in out


def test_check_reports_a_split_layout_problem(tmp_path, capsys):
    root = make_folder(tmp_path / "d", {"train": {"a": 1, "b": 1}, "val": {"a": 1}})
    assert main(["check", str(root), "--json"]) == 1
    out = capsys.readouterr().out
    assert "layout: " in out and "in train/ but not val/: ['b']" in out
    assert '"layout_error"' in out


def test_check_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    (tmp_path / "file.png").write_bytes(b"x")
    assert main(["check", str(tmp_path / "file.png")]) == 2
    assert "file.png is a file, expected a folder" in capsys.readouterr().err


def test_digits_command_writes_a_loadable_image_folder(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["digits", "--out", str(out), "--img-size", "24"]) == 0
    assert "train 1438 images, val 359 images" in capsys.readouterr().out
    train, val, names = build_datasets(DataSpec("folder", root=str(out)), 24, HALF, HALF)
    assert names == [str(i) for i in range(10)] and (len(train), len(val)) == (1438, 359)
    assert train[0][0].shape == (3, 24, 24)


def test_digits_command_replaces_its_own_folder_but_nothing_else(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["digits", "--out", str(out), "--img-size", "8"]) == 0
    (out / "train" / "0" / "stray.png").write_bytes(png_bytes(1))
    assert main(["digits", "--out", str(out), "--img-size", "8"]) == 0
    assert not (out / "train" / "0" / "stray.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"], "no staging folder left behind"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    assert main(["digits", "--out", str(tmp_path / "mine")]) == 2
    assert "is not a generated (digits) folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_imagenet100_rerun_from_a_moved_imagenet_repoints_links(tmp_path, capsys):
    old, new, out = fake_imagenet(tmp_path / "old"), fake_imagenet(tmp_path / "new"), tmp_path / "in100"
    classes = str(class_file(tmp_path))
    assert main(["imagenet100", "--imagenet", str(old), "--out", str(out), "--classes", classes]) == 0
    assert main(["imagenet100", "--imagenet", str(new), "--out", str(out), "--classes", classes]) == 0
    assert "0 created, 0 kept, 6 replaced" in capsys.readouterr().out
    assert (out / "val" / WNIDS[0]).resolve() == (new / "val" / WNIDS[0]).resolve()


def test_imagenet100_never_replaces_a_real_folder(tmp_path, capsys):
    imagenet, out = fake_imagenet(tmp_path / "imagenet"), tmp_path / "in100"
    (out / "train" / WNIDS[0]).mkdir(parents=True)
    rc = main(["imagenet100", "--imagenet", str(imagenet), "--out", str(out), "--classes", str(class_file(tmp_path))])
    assert rc == 2 and "exists and is not a symlink" in capsys.readouterr().err
