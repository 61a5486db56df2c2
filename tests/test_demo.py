"""The real demo server on a free localhost port, driven by gradio_client and by headless Chromium.

One server (five tiny untrained runs, one per attention mechanism) serves the whole module.
Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from conftest import make_tiny_run  # noqa: E402
from effvit_deploy.backends import load_runner  # noqa: E402
from effvit_deploy.cli.demo import main as demo_main  # noqa: E402
from effvit_deploy.data import eval_transform  # noqa: E402
from effvit_deploy.demo import example_images, launch, load_image, load_variants  # noqa: E402
from effvit_deploy.demo.browser import classify_example, find_chromium  # noqa: E402
from test_demo_inputs import png_bomb  # noqa: E402

# gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

MECHANISMS = ("exact", "linformer", "performer", "nystrom", "atrous")
# Distinct run accuracies so exactly one variant is the most accurate (atrous).
TOP1 = {"exact": 0.61, "linformer": 0.55, "performer": 0.52, "nystrom": 0.58, "atrous": 0.63}
MAX_PIXELS = 1_000_000
TIMEOUT_S = 60
GRADIENT, OFF = "gradient x input", "off"
CONCURRENCY = 2
RUN_GFLOPS = 0.123


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("demo-runs")
    runs = [make_tiny_run(root / m, m, top1=TOP1[m]) for m in MECHANISMS]
    summary = runs[0] / "summary.json"  # a run that recorded its GFLOPs (a value no counter gives)
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "gflops": RUN_GFLOPS}))
    return runs


class InFlight:
    """Wraps a variant's predict to record how many requests ran it at the same time."""

    def __init__(self, predict):
        self.predict, self.now, self.most, self.calls = predict, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.02)  # widen the window in which overlapping requests would be seen
            return self.predict(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture(scope="module")
def variants(runs):
    loaded = load_variants(runs, "auto")
    loaded[0].predict = InFlight(loaded[0].predict)
    return loaded


@pytest.fixture(scope="module")
def server(runs, variants):
    app, url = launch(runs, "auto", port=free_port(), max_pixels=MAX_PIXELS, block=False, max_queue=64,
                      variants=variants, concurrency_limit=CONCURRENCY)
    yield app, url
    app.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[1], verbose=False)


def classify(client: Client, path, resolution=64, backend="auto", saliency=GRADIENT):
    return client.predict(handle_file(str(path)) if path is not None else None, resolution, backend, saliency,
                          api_name="/classify")


def columns(result) -> list[tuple[str, dict, str, str]]:
    """(header, label, info, saliency path) per variant from a /classify result."""
    rest = result[1:]
    return [tuple(rest[i:i + 4]) for i in range(0, len(rest), 4)]


def backend_top5(run: Path, image_path, resolution: int) -> list[str]:
    runner = load_runner(run, "torch")
    x = eval_transform(replace(runner.card, img_size=resolution))(load_image(image_path)).unsqueeze(0).numpy()
    logits = runner(x)[0]
    return [runner.card.class_names[i] for i in np.argsort(-logits)[:5]]


def test_server_binds_to_localhost_without_a_share_link(server):
    app, url = server
    assert url.startswith("http://127.0.0.1:")
    assert app.share is False and app.share_url is None
    assert app.server_name == "127.0.0.1"


def test_every_variant_answers_with_the_backends_top5_latency_gflops_and_saliency(client, runs):
    example = example_images()[2]
    result = classify(client, example, resolution=80)
    assert result[0].startswith("5/5 variants answered at 80 px")
    cols = columns(result)
    assert len(cols) == len(MECHANISMS)
    for run, (header, label, info, saliency) in zip(runs, cols):
        assert header.startswith(f"### {run.name}")
        top5 = [c["label"] for c in label["confidences"]]
        assert top5 == backend_top5(run, example, 80)
        assert label["label"] == top5[0]
        probs = [c["confidence"] for c in label["confidences"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        latency = float(re.search(r"latency: ([\d.]+) ms\*\* \((\w[\w-]*), 80 px\)", info).group(1))
        assert latency > 0
        assert re.search(r"GFLOPs: [\d.]+ at 80 px", info)
        assert (f"(run: {RUN_GFLOPS} at 64 px)" in info) == (run.name == "exact")
        assert f"top-1 {TOP1[run.name]:.3f} (image count not recorded)" in info  # a tiny run has no metrics.jsonl
        overlay = np.asarray(Image.open(saliency))
        assert overlay.shape == (256, 256, 3) and overlay.std() > 0


def test_fastest_and_most_accurate_variants_are_marked(client):
    result = classify(client, example_images()[0], saliency=OFF)
    cols = columns(result)
    latencies = [float(re.search(r"latency: ([\d.]+) ms", info).group(1)) for _, _, info, _ in cols]
    fastest = [i for i, (header, *_) in enumerate(cols) if "fastest" in header]
    accurate = [MECHANISMS[i] for i, (header, *_) in enumerate(cols) if "most accurate" in header]
    assert len(fastest) == 1 and latencies[fastest[0]] == min(latencies)
    assert accurate == ["atrous"]
    assert f"GFLOPs: {RUN_GFLOPS} at 64 px (run)" in cols[0][2]
    assert f"Fastest: **{MECHANISMS[fastest[0]]}**" in result[0]


def test_resolution_changes_the_input_and_the_flops(client):
    low, high = (columns(classify(client, example_images()[3], resolution=r, saliency=OFF)) for r in (48, 96))
    for (_, _, info_low, _), (_, _, info_high, _) in zip(low, high):
        flops_low = float(re.search(r"GFLOPs: ([\d.]+) at 48 px", info_low).group(1))
        flops_high = float(re.search(r"GFLOPs: ([\d.]+) at 96 px", info_high).group(1))
        assert flops_high > 3.5 * flops_low  # 4x the patches, at least linear cost


def test_class_token_attention_is_drawn_for_exact_only(client):
    cols = columns(classify(client, example_images()[4], saliency="class-token attention (exact only)"))
    for name, (_, _, info, saliency) in zip(MECHANISMS, cols):
        if name == "exact":
            assert saliency is not None
        else:
            assert saliency is None and "forms no attention matrix" in info


@pytest.mark.parametrize("case,message", [
    ("not-an-image", "is not an image"),
    ("empty", "is empty (0 bytes)"),
    ("too-many-pixels", "over this demo's limit of 1,000,000"),
    ("nothing", "No image"),
])
def test_bad_inputs_get_a_clear_message_and_the_server_keeps_serving(client, tmp_path, case, message):
    path = {"not-an-image": tmp_path / "notes.png", "empty": tmp_path / "empty.png",
            "too-many-pixels": tmp_path / "bomb.png", "nothing": None}[case]
    if case == "not-an-image":
        path.write_text("hello, I am text")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "too-many-pixels":
        path.write_bytes(png_bomb(4000, 4000))  # 16 MP declared, 20 KB on disk
    with pytest.raises(AppError, match=re.escape(message)):
        classify(client, path)
    assert classify(client, example_images()[0], saliency=OFF)[0].startswith("5/5")


@pytest.mark.parametrize("resolution,backend,saliency,message", [
    (50, "auto", GRADIENT, "resolution must be one of"),
    (64, "tensorrt-turbo", GRADIENT, "backend must be one of"),
    (64, "auto", "x-ray", "saliency must be one of"),
])
def test_out_of_range_api_arguments_are_refused_by_name(client, resolution, backend, saliency, message):
    with pytest.raises(AppError, match=message):
        classify(client, example_images()[0], resolution, backend, saliency)


def test_twenty_concurrent_requests_are_all_answered_within_the_concurrency_limit(client, variants):
    in_flight = variants[0].predict
    calls_before = in_flight.calls
    examples = example_images()
    jobs = [client.submit(handle_file(examples[i % len(examples)]), 64, "auto", OFF, api_name="/classify")
            for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda job: job.result(timeout=TIMEOUT_S), jobs))
    assert len(results) == 20
    assert all(r[0].startswith("5/5 variants answered") for r in results)
    assert in_flight.calls - calls_before == 20
    assert in_flight.most == CONCURRENCY
    # same image, same answer, whatever the interleaving
    tops = [[c[1]["label"] for c in columns(r)] for r in results]
    for i in range(len(examples), 20):
        assert tops[i] == tops[i % len(examples)]


@pytest.mark.slow
def test_onnxruntime_backend_serves_an_exported_run_and_a_run_without_it_fails_alone(tmp_path):
    from effvit_deploy.export import export_run

    exported = make_tiny_run(tmp_path / "exact", "exact")
    export_run(exported, formats=("onnx",), precisions=("fp32",), verify=False)
    plain = make_tiny_run(tmp_path / "performer", "performer")
    app, url = launch([exported, plain], "auto", port=free_port(), block=False)
    try:
        client = Client(url, verbose=False)
        auto = columns(classify(client, example_images()[1], saliency=OFF))
        assert "(onnxruntime, 64 px)" in auto[0][2] and "(torch, 64 px)" in auto[1][2]
        on_torch = columns(classify(client, example_images()[1], backend="torch", saliency=OFF))
        assert [c["label"] for c in auto[0][1]["confidences"]] == [c["label"] for c in on_torch[0][1]["confidences"]]
        result = classify(client, example_images()[1], backend="onnxruntime", saliency=OFF)
        ort_exact, ort_performer = columns(result)
        assert result[0].startswith("1/2 variants answered")
        assert "(onnxruntime, 64 px)" in ort_exact[2]
        assert not ort_performer[1] and "failed" in ort_performer[2] and "effvit-export" in ort_performer[2]
    finally:
        app.close()


def test_cli_refuses_a_missing_run_directory_without_a_traceback(tmp_path, capsys):
    assert demo_main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not training run directories" in err and "Traceback" not in err


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--share" in out and "127.0.0.1" in out and "examples:" in out


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                    reason="chromium is not installed (Debian: apt-get install chromium); in CI this test fails instead")
def test_browser_classifies_an_example_like_the_backend(server, runs, tmp_path):
    assert find_chromium() is not None, "CI must run the browser test: .ci/run installs Debian's chromium"
    example = 1
    shot = tmp_path / "demo.png"
    labels = classify_example(server[1], example, screenshot=shot, timeout_s=TIMEOUT_S)
    assert len(labels) == len(runs)
    for run, shown in zip(runs, labels):
        expected = backend_top5(run, example_images()[example], 64)
        assert list(shown) == expected
        assert max(shown, key=shown.get) == expected[0]
    with Image.open(shot) as image:
        assert image.width >= 1000 and image.height >= 800


def test_cli_defaults_are_localhost_no_share_auto_backend(tmp_path, monkeypatch):
    import effvit_deploy.demo.app as demo_app

    seen = {}
    monkeypatch.setattr(demo_app, "launch", lambda run_dirs, backend, **kw: seen.update(kw, backend=backend, runs=run_dirs))
    run = make_tiny_run(tmp_path / "exact", "exact")
    assert demo_main([str(run)]) == 0
    assert seen["host"] == "127.0.0.1" and seen["share"] is False and seen["port"] == 7860
    assert seen["backend"] == "auto" and seen["runs"] == [run]
    assert demo_main([str(run), "--share", "--host", "0.0.0.0", "--max-pixels", "5000"]) == 0
    assert seen["share"] is True and seen["host"] == "0.0.0.0" and seen["max_pixels"] == 5000


def test_printed_command_parses_back_to_the_same_runs(tmp_path):
    import shlex

    from effvit_deploy.cli.demo import build_parser
    from effvit_deploy.demo import command

    runs = [tmp_path / "digits exact", tmp_path / "digits-performer"]
    line = command(runs, backend="onnxruntime", port=7861)
    argv = shlex.split(line)
    assert argv[0] == "effvit-demo"
    args = build_parser().parse_args(argv[1:])
    assert args.run_dirs == runs and args.backend == "onnxruntime" and args.port == 7861
    assert shlex.split(command(runs))[1:] == [str(r) for r in runs]
