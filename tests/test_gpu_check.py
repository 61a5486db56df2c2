"""benchmarks/gpu_check.sh --cpu-smoke: the GPU check's own code path, end to end on CPU at tiny sizes."""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

from effvit_deploy.bench.results import load_results

REPO = Path(__file__).resolve().parents[1]
KINDS = ("infer-b64-bf16", "train-b64-bf16", "infer-b1-bf16", "infer-b1-cudagraphs", "infer-b64-fp32", "summary",
         "pytest-cuda")


# What the lent GPU machine has (docs/gpu_check.md): torch, triton, numpy, scipy, matplotlib, onnx,
# onnxruntime and pytest, with the packages they depend on. No package index.
GPU_MACHINE_PACKAGES = (
    "torch", "torchgen", "functorch", "triton", "nvidia", "cuda", "filelock", "typing_extensions", "sympy", "mpmath",
    "networkx", "jinja2", "markupsafe", "fsspec", "setuptools", "_distutils_hack", "numpy", "scipy", "matplotlib",
    "mpl_toolkits", "contourpy", "cycler", "fontTools", "kiwisolver", "packaging", "PIL", "pillow", "pyparsing",
    "dateutil", "onnx", "ml_dtypes", "google", "onnxruntime", "flatbuffers", "pytest", "_pytest", "iniconfig", "pluggy",
    "pygments", "py",
)


def carried_wheels() -> list[str]:
    """The distributions benchmarks/gpu_wheels.txt carries to the GPU machine."""
    lines = (REPO / "benchmarks" / "gpu_wheels.txt").read_text().splitlines()
    return [line.split("#")[0].split("==")[0].strip() for line in lines if line.split("#")[0].strip()]


def normalise(distribution: str) -> str:
    """A distribution's name as its .dist-info folder spells it: PyYAML and pyyaml, scikit-learn
    and scikit_learn are one name."""
    return re.sub(r"[-_.]+", "_", distribution).lower()


@functools.lru_cache(maxsize=1)
def carried_modules() -> tuple[str, ...]:
    """The top-level modules the carried distributions provide (pyyaml: yaml, _yaml; scikit-learn:
    sklearn), and the folders of their bundled shared libraries (scikit_learn.libs)."""
    wanted = {normalise(dist) for dist in carried_wheels()}
    modules = [module for module, dists in metadata.packages_distributions().items()
               if any(normalise(dist) in wanted for dist in dists)]
    return (*modules, *(f"{name}.libs" for name in wanted))


@pytest.fixture(scope="module")
def gpu_machine(tmp_path_factory):
    """A Python that sees only what the GPU machine has plus the carried wheels' packages: this
    interpreter without its site-packages (`python -S`), those packages linked from them."""
    root = tmp_path_factory.mktemp("gpu-machine")
    site_packages = Path(torch.__file__).parents[1]
    owners = metadata.packages_distributions()
    for kind, names in (("site", GPU_MACHINE_PACKAGES), ("carried", carried_modules())):
        (root / kind).mkdir()
        for name in names:
            # the package, and its metadata (pytest -v prints its plugins' versions)
            owned = {normalise(dist) for dist in owners.get(name, ())}
            dist_infos = [path.name for path in site_packages.glob("*.dist-info") if normalise(path.name.split("-")[0]) in owned]
            for entry in {name, f"{name}.py", f"{name}.libs", *dist_infos}:
                if (site_packages / entry).exists() and not (root / kind / entry).exists():
                    (root / kind / entry).symlink_to(site_packages / entry)
    (root / "bin").mkdir()
    python = root / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    return root


def test_the_check_imports_on_the_gpu_machines_packages_with_the_carried_wheels_and_not_without(gpu_machine):
    code = "import effvit_deploy.bench.matrix, effvit_deploy.bench.train_step, gpu_check"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}

    def run(*paths: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(gpu_machine / "bin" / "python"), "-c", code], capture_output=True, text=True,
                              env={**env, "PYTHONPATH": ":".join(map(str, (REPO, REPO / "benchmarks", *paths)))}, timeout=120)

    done = run(gpu_machine / "carried", gpu_machine / "site")
    assert done.returncode == 0, done.stderr
    without = run(gpu_machine / "site")
    assert without.returncode != 0 and any(f"No module named '{name}'" in without.stderr for name in carried_modules())


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run checks the CPU refusal of CUDA graphs")
def test_cpu_smoke_runs_every_step_and_packs_one_results_folder(tmp_path, gpu_machine):
    """On what the GPU machine has plus the carried packages (gpu_machine), so a dependency the
    check gains but the machine lacks fails here, not in the GPU's few minutes."""
    out, results = tmp_path / "out", tmp_path / "gpu-check"
    (tmp_path / "no-wheels").mkdir()
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "OUT": str(out), "RESULTS": str(results),
           "GIT_COMMIT": "abc123", "WHEELS": str(tmp_path / "no-wheels"),
           "PATH": f"{gpu_machine / 'bin'}:{os.environ['PATH']}",
           "PYTHONPATH": f"{gpu_machine / 'carried'}:{gpu_machine / 'site'}"}
    done = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], env=env, capture_output=True,
                          text=True, timeout=300)
    log = (out / "summary.txt").read_text()
    assert done.returncode == 0, log
    for kind in KINDS:
        assert f"== {kind}: exit 0" in log, log

    infer = load_results(results / "results.jsonl")
    measured = {(r["attention"], r["backend"], r["precision"], r["batch"]) for r in infer if r["status"] == "ok"}
    for att in ("exact", "linformer", "performer", "nystrom", "atrous", "attention-free"):
        assert {(att, "torch", "bf16", 4), (att, "torch", "bf16", 1), (att, "torch", "fp32", 4)} <= measured, att
    refused = [r for r in infer if r["backend"] == "torch-compile-cudagraphs"]
    assert len(refused) == 6 and all(r["status"] == "skipped" and "CUDA graphs need an NVIDIA GPU" in r["reason"]
                                     for r in refused)
    train = load_results(results / "train_step.jsonl")
    assert len(train) == 12 and all(r["status"] == "ok" and r["epoch_images"] == 126_689 for r in train)

    summary = (results / "summary.md").read_text()
    assert summary.startswith("# CPU smoke run of the GPU check (toy model, not a GPU figure)")
    for text in ("git commit measured: abc123", "benchmarks/gpu_check.sh --cpu-smoke", "latency / attention-free bound",
                 "memory / exact's", "## Training step", "bound / exact (the bound is a bound)"):
        assert text in summary, text
    data = json.loads((results / "summary.json").read_text())
    ratios = data["inference"]["torch, bf16, batch 4"]
    assert set(ratios) == {"exact", "linformer", "performer", "nystrom", "atrous", "attention-free"}
    assert all(cell["over_bound"] == pytest.approx(1.0) for cell in ratios["attention-free"].values())

    cuda_tests = (results / "pytest_cuda.txt").read_text()  # collected on the machine's packages, skipped on CPU
    assert " SKIPPED" in cuda_tests and not re.search(r"^(ERROR|FAILED)| (ERROR|FAILED)", cuda_tests, re.M), cuda_tests

    with tarfile.open(out / "results.tgz") as tar:
        names = tar.getnames()
    assert {"gpu-check/summary.md", "gpu-check/results.jsonl", "gpu-check/train_step.jsonl",
            "gpu-check/pytest_cuda.txt"} <= set(names)
    assert not any("/cache" in n for n in names), "model caches stay out of the archive"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the full check would run")
def test_without_a_gpu_the_full_check_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "infer-b64-bf16", "--out",
                           str(tmp_path)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)
    assert done.returncode == 3 and done.stderr.strip().count("\n") == 0 and "--cpu-smoke" in done.stderr
