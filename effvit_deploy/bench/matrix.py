"""The configuration sweep: runs x backends x precisions x batch sizes x resolutions.

Each configuration is measured by `worker.measure`, in a fresh process (clean
peak-memory figures; a configuration that exhausts memory or time is killed and recorded as
"oom" / "timeout" while the sweep goes on). A watchdog polls the subprocess's resident memory
against a cap (default: 90% of the memory available when it starts) and its wall time against
`timeout_s`. Once a (run, backend, precision, batch) fails for lack of memory or time, its
larger resolutions are recorded as skipped rather than tried. Rows are appended to the results
file after every configuration, with the environment (results.py).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import psutil
from tqdm import tqdm

from ..backends import BACKENDS, Runner, backend_status, find_artifact, get_backend, load_runner
from ..flops import count_flops, count_params
from ..runs import load_model_card, run_name
from .accuracy import artifact_accuracy
from .bound import bound_subjects
from .layer import LAYER_BACKENDS, VIT_S_DIM, VIT_S_HEADS, build_layer, layer_flops, tokens_for
from ..environment import environment
from .results import append_results
from .worker import THREAD_POLICIES, measure, measure_to_file, thread_policy_of

RESOURCE_FAILURES = ("oom", "timeout")


@dataclass
class Subject:
    """What is benchmarked: a run directory (mode "model") or a bare attention layer ("layer")."""

    mode: str
    name: str
    attention: str
    model: str
    patch: int
    params: int
    prefix: int = 1
    train_res: Optional[int] = None
    run_dir: Optional[Path] = None
    layer: dict[str, Any] = field(default_factory=dict)
    _flops: dict[int, Optional[int]] = field(default_factory=dict)

    def tokens(self, resolution: int) -> int:
        return tokens_for(resolution, self.patch, self.prefix)

    def gflops(self, resolution: int) -> Optional[float]:
        if resolution not in self._flops:
            self._flops[resolution] = _count(self, resolution)
        value = self._flops[resolution]
        return None if value is None else value / 1e9


def _count(subject: Subject, resolution: int) -> Optional[int]:
    """FLOPs per image, on the meta device when the mechanism allows it (free at any size),
    else on a fresh copy on the GPU when there is one, else on CPU (some mechanisms need real
    values, e.g. data-dependent scaling; a CPU forward at 16k tokens takes seconds)."""
    import torch

    for device in ("meta", *(("cuda",) if torch.cuda.is_available() else ()), "cpu"):
        try:
            if subject.mode == "layer":
                module = build_layer(subject.attention, subject.layer["dim"], subject.layer["heads"], **subject.layer["kwargs"])
                return layer_flops(module.to(device), resolution, subject.patch, subject.layer["dim"])
            return count_flops(load_model_card(subject.run_dir).build().to(device), resolution)
        except Exception:  # not computable on meta: retry on CPU; None if neither works
            continue
    return None


def model_subject(run_dir: Union[str, Path]) -> Subject:
    card = load_model_card(run_dir)
    model = card.build()
    return Subject(
        mode="model", name=run_name(run_dir), attention=card.attention, model=card.model,
        patch=card.patch_size, params=count_params(model), run_dir=Path(run_dir),
        prefix=int(getattr(model, "num_prefix_tokens", 1)), train_res=card.img_size,
    )


def artifact_formats(backends: Sequence[str]) -> tuple[str, ...]:
    """The CPU artifact formats (ONNX, OpenVINO IR) `backends` read; the IR is converted from the
    ONNX graph, so it brings ONNX along. GPU engines are built by `effvit-export` on the GPU."""
    formats = {get_backend(b).artifact for b in backends} & {"onnx", "openvino"}
    return tuple(f for f in ("onnx", "openvino") if f in formats or (f == "onnx" and formats))


def layer_subject(attention: str, dim: int = VIT_S_DIM, heads: int = VIT_S_HEADS, patch: int = 16, **kwargs: Any) -> Subject:
    layer = build_layer(attention, dim, heads, **kwargs)
    return Subject(
        mode="layer", name=f"layer-{attention}", attention=attention, model=f"attention layer dim {dim}, {heads} heads",
        patch=patch, params=sum(p.numel() for p in layer.parameters()),
        layer={"dim": dim, "heads": heads, "kwargs": kwargs},
    )


def resolve_backends(requested: Union[str, Sequence[str]]) -> tuple[list[str], dict[str, str]]:
    """(backends to run, {backend: reason} for those skipped). "auto" = every usable backend."""
    if isinstance(requested, str):
        requested = [b.strip() for b in requested.split(",") if b.strip()]
    if list(requested) == ["auto"]:
        status = {b: backend_status(b) for b in BACKENDS}
        return [b for b, r in status.items() if r is None], {b: r for b, r in status.items() if r is not None}
    unknown = [b for b in requested if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; valid: auto, {', '.join(BACKENDS)}")
    skipped = {b: backend_status(b) for b in requested}
    return [b for b in requested if skipped[b] is None], {b: r for b, r in skipped.items() if r is not None}


def _precheck(subject: Subject, backend: str, precision: str, resolution: int, batch: int) -> Optional[str]:
    """Why this configuration cannot run (missing artifact, size outside its profile), or None."""
    if subject.mode == "layer":
        if backend not in LAYER_BACKENDS:
            return f"--layer-only times the PyTorch module only ({', '.join(LAYER_BACKENDS)})"
        return None
    fmt = get_backend(backend).artifact
    if fmt is None:
        return None
    try:
        _, entry = find_artifact(subject.run_dir, fmt, precision)
    except FileNotFoundError as exc:
        return str(exc)
    inputs = entry.get("inputs") or {}
    max_res = max((inputs.get("height") or [0])[-1], 0) or None
    max_batch = (inputs.get("batch") or [0])[-1] or None
    if max_res is not None and resolution > max_res:
        return f"the {fmt} artifact was exported for up to {max_res} px: re-export with `effvit-export --max-res {resolution}`"
    if max_batch is not None and batch > max_batch:
        return f"the {fmt} artifact was exported for batches up to {max_batch}: re-export with `--max-batch {batch}`"
    return None


_CONTEXT = None


def _context(thread_policy: str):
    """A forkserver that has imported torch, timm and the worker once: each configuration then
    starts in a fresh process in milliseconds instead of re-importing for seconds.

    With the "passive" thread policy it starts with OMP_WAIT_POLICY=PASSIVE (when not set
    already): PyTorch's OpenMP threads otherwise spin between parallel regions, and on a shared
    machine a preempted spinning thread stalls every barrier (ViT-S/16 at 224 px, 2 threads,
    loaded 2-core machine: 5.6 s spinning vs 0.14 s passive). The policy is read once, when the
    server starts; each row records the policy its worker actually ran under.
    """
    global _CONTEXT
    if _CONTEXT is None:
        if thread_policy == "passive":
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["effvit_deploy.bench.worker"])
    return _CONTEXT


def run_isolated(config: dict[str, Any], timeout_s: float, memory_cap_bytes: Optional[int] = None) -> dict[str, Any]:
    """`worker.measure(config)` in a fresh process, killed past the time or memory cap."""
    cap = memory_cap_bytes or int(0.9 * psutil.virtual_memory().available)
    with tempfile.TemporaryDirectory(prefix="effvit-bench-") as tmp:
        out = Path(tmp) / "result.json"
        proc = _context(config.get("thread_policy", "default")).Process(target=measure_to_file, args=(config, str(out)), daemon=True)
        proc.start()
        watched = psutil.Process(proc.pid)
        start, peak_rss, killed = time.monotonic(), 0, None
        while proc.is_alive():
            try:
                peak_rss = max(peak_rss, watched.memory_info().rss)
            except psutil.Error:
                pass
            if peak_rss > cap:
                killed = ("oom", f"resident memory {peak_rss / 2**30:.1f} GiB passed the cap of {cap / 2**30:.1f} GiB")
            elif time.monotonic() - start > timeout_s:
                killed = ("timeout", f"still running after {timeout_s:.0f} s")
            if killed:
                proc.kill()
                break
            proc.join(0.05)
        proc.join()
        if killed:
            return {"status": killed[0], "reason": killed[1]}
        if out.is_file():
            return json.loads(out.read_text())
        if proc.exitcode == -signal.SIGKILL:
            return {"status": "oom", "reason": "killed by SIGKILL (the kernel's out-of-memory killer?)"}
        return {"status": "error", "reason": f"worker process exited with code {proc.exitcode} (see stderr)"}


def _accuracy(subject: Subject, backend: str, precision: str, res: int, enabled: bool, limit: Optional[int],
              runners: dict[tuple, Runner], runner_factory: Optional[Callable[[dict], Runner]],
              thread_policy: str) -> dict[str, Any]:
    """Top-1 fields of a model row at its own resolution; one runner per artifact, reused
    across resolutions (`runners`)."""
    key = (subject.name, backend, precision)

    def factory() -> Runner:
        if key not in runners:
            if runner_factory is not None:
                runners[key] = runner_factory({"run_dir": str(subject.run_dir), "backend": backend,
                                               "precision": precision, "mode": "model"})
            else:
                runners[key] = load_runner(subject.run_dir, backend, precision, policy=thread_policy_of(thread_policy))
        return runners[key]

    return artifact_accuracy(subject.run_dir, load_model_card(subject.run_dir), factory, enabled, limit, res)


def _configs(subjects, backends, precisions, batch_sizes, resolutions):
    for res in sorted(resolutions):
        for batch in batch_sizes:
            for subject in subjects:
                for backend in backends:
                    for precision in precisions:
                        yield subject, backend, precision, batch, res


def run_benchmark(
    run_dirs: Sequence[Union[str, Path]],
    backends: Union[str, Sequence[str]] = "auto",
    resolutions: Sequence[int] = (224,),
    batch_sizes: Sequence[int] = (1,),
    precisions: Sequence[str] = ("fp32",),
    out_dir: Union[str, Path] = "bench-out",
    *,
    layers: Sequence[Subject] = (),
    warmup: int = 3,
    repeats: int = 20,
    max_time_s: Optional[float] = 20.0,
    timeout_s: float = 600.0,
    memory_cap_bytes: Optional[int] = None,
    accuracy: bool = True,
    accuracy_limit: Optional[int] = None,
    isolate: bool = True,
    thread_policy: str = "default",
    bound: bool = True,
    runner_factory: Optional[Callable[[dict], Runner]] = None,
    progress: bool = True,
) -> Path:
    """Benchmark every configuration and append one row each to out_dir/results.jsonl (+ .csv).

    Args:
        run_dirs: run directories (model.json, weights, export/ for exported backends).
        backends: "auto" or names from `effvit_deploy.backends.BACKENDS`; unusable ones are
            recorded as skipped with the reason.
        layers: `layer_subject(...)`s for the layer-only scaling study (timed like models).
        max_time_s: timed-work budget per configuration (at least 3 repeats are always done).
        timeout_s, memory_cap_bytes: limits of each isolated configuration.
        isolate: one fresh process per configuration (needed for clean CPU peak memory).
        thread_policy: "default" leaves each runtime's threads as it sets them (PyTorch's
            OpenMP and ONNX Runtime's pool spin while idle, fastest on a dedicated machine);
            "passive" makes idle threads sleep (OMP_WAIT_POLICY=PASSIVE, ONNX Runtime
            allow_spinning=0), robust on a machine shared with other jobs (see `_context`).
        bound: also time the attention-free bound of each model (`bench.bound`), the ceiling
            every variant's speed-up is read against.
        accuracy, accuracy_limit: top-1 of each artifact on its backend at each resolution,
            over the first `accuracy_limit` validation images.
        runner_factory: in-process only (isolate=False): builds the Runner from a config dict,
            instead of `load_runner` (tests inject failing runners through it).
    Returns the results JSONL path.
    """
    if thread_policy not in THREAD_POLICIES:
        raise ValueError(f"unknown thread policy {thread_policy!r}; valid: {', '.join(THREAD_POLICIES)}")
    if runner_factory is not None and isolate:
        raise ValueError("runner_factory needs isolate=False (a subprocess cannot receive a Python callable)")
    bad = [r for r in resolutions if r <= 0]
    if bad or not resolutions or not batch_sizes or not precisions:
        raise ValueError(f"need positive resolutions and non-empty batch sizes and precisions, got {resolutions}, {batch_sizes}, {precisions}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    use, skipped = resolve_backends(backends)
    run_dirs = list(dict.fromkeys(Path(d) for d in run_dirs))
    if not run_dirs and not layers:
        raise ValueError("nothing to benchmark: give run directories, --model, or --layer-only")
    models = [model_subject(d) for d in run_dirs]
    for subject in models:
        if any(r % subject.patch for r in resolutions):
            raise ValueError(f"resolutions {list(resolutions)} must be multiples of {subject.name}'s patch size {subject.patch}")
    if bound and run_dirs:
        bounds = bound_subjects(run_dirs, out_dir / "cache", resolutions, max(batch_sizes),
                                formats=artifact_formats(use), precisions=precisions)
        models += [model_subject(d) for d in bounds if d not in run_dirs]
    subjects = models + list(layers)
    env = environment()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    sweep = {"sweep_started": stamp, "warmup": warmup, "repeats_max": repeats, "max_time_s": max_time_s,
             "thread_policy": thread_policy}
    results_path = out_dir / "results.jsonl"

    def base_row(subject: Subject, backend: str, precision: str, batch=None, res=None) -> dict[str, Any]:
        row = {
            "mode": subject.mode, "run": subject.name, "model": subject.model, "attention": subject.attention,
            "backend": backend, "precision": precision, "batch": batch, "resolution": res,
            "tokens": subject.tokens(res) if res else None, "gflops": subject.gflops(res) if res else None,
            "params": subject.params, "patch": subject.patch, "train_res": subject.train_res,
        }
        return {**row, **sweep}

    skip_rows = [
        {**base_row(s, b, p), "status": "skipped", "reason": f"backend unavailable: {reason}", "env": env}
        for b, reason in skipped.items() for s in subjects for p in precisions
    ]
    if skip_rows:
        append_results(out_dir, skip_rows)

    accuracy_cache: dict[tuple, dict] = {}
    runners: dict[tuple, Runner] = {}
    failed_at: dict[tuple, tuple[str, int]] = {}
    configs = list(_configs(subjects, use, precisions, batch_sizes, resolutions))
    bar = tqdm(configs, desc="effvit-bench", unit="config", disable=not progress)
    for subject, backend, precision, batch, res in bar:
        bar.set_postfix_str(f"{subject.name} {backend} {precision} b{batch} {res}px")
        row = base_row(subject, backend, precision, batch, res)
        key = (subject.name, backend, precision, batch)
        reason = _precheck(subject, backend, precision, res, batch)
        if reason is not None:
            result = {"status": "skipped", "reason": reason}
        elif key in failed_at:
            status, at = failed_at[key]
            result = {"status": "skipped", "reason": f"not run: {status} at {at} px"}
        else:
            config = {
                "mode": subject.mode, "run_dir": str(subject.run_dir) if subject.run_dir else None,
                "backend": backend, "precision": precision, "batch": batch, "resolution": res,
                "warmup": warmup, "repeats": repeats, "max_time_s": max_time_s,
                "attention": subject.attention, "patch": subject.patch,
                "dim": subject.layer.get("dim"), "heads": subject.layer.get("heads"),
                "attention_kwargs": subject.layer.get("kwargs", {}), "thread_policy": thread_policy,
            }
            result = run_isolated(config, timeout_s, memory_cap_bytes) if isolate else measure(config, runner_factory)
            if result["status"] in RESOURCE_FAILURES:
                failed_at[key] = (result["status"], res)
        if subject.mode == "model":
            acc_key = (subject.name, backend, precision, res)
            if acc_key not in accuracy_cache:
                accuracy_cache[acc_key] = _accuracy(subject, backend, precision, res, result["status"] == "ok" and accuracy,
                                                    accuracy_limit, runners, runner_factory, thread_policy)
            row.update(accuracy_cache[acc_key])
        row.update(result)
        row["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        row["env"] = env
        append_results(out_dir, [row])
    if not results_path.exists():
        append_results(out_dir, [])
    return results_path
