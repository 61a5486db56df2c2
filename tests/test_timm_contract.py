"""The timm drop-in contract: every model feature timm's own model tests check (timm 1.0.31,
tests/test_models.py and companions) works for every mechanism, with plain timm as the control.

Each test runs for "timm" (plain `timm.create_model`, built with `dynamic_img_size=True` as
build_model builds) and for every mechanism of `ATTENTIONS` (built by `build_model`). Where
plain timm supports a feature only without dynamic image size (FX symbolic tracing), the
control is built that way and says so. Where an effvit_deploy model refuses a feature
(torch.jit.script), the test asserts the one-line refusal. Tiny models: ViT-Tiny width, depth 2,
64 px (a 4x4 patch grid), small mechanism budgets.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import multiprocessing

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models._manipulate import adapt_input_conv
from timm.utils import ModelEmaV3
from torchvision.models.feature_extraction import create_feature_extractor

from effvit_deploy import ATTENTIONS, build_model

TINY = "vit_tiny_patch16_224"
BUDGETS = {
    "exact": {},
    "linformer": {"proj_len": 8},
    "performer": {"num_features": 16},
    "nystrom": {"landmarks": 4, "conv_kernel": 3},
    "atrous": {"window_size": 2, "dilations": (1, 2)},
}
VARIANTS = ["timm", *sorted(ATTENTIONS)]
SIZES = ((64, 64), (48, 80))


def make(variant: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """The tiny model of `variant` ("timm" is the control) in eval mode."""
    torch.manual_seed(seed)
    kwargs = {"num_classes": 10, "depth": 2, "img_size": 64, **kwargs}
    if variant == "timm":
        kwargs.setdefault("dynamic_img_size", True)
        return timm.create_model(TINY, **kwargs).eval()
    return build_model(TINY, attention=variant, **{**BUDGETS[variant], **kwargs})


@pytest.fixture(params=VARIANTS)
def variant(request) -> str:
    return request.param


def images(*size: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# -- forward, backward, heads ---------------------------------------------------------------------


def test_forward_and_backward_reach_every_parameter_at_two_sizes(variant):
    model = make(variant).train()
    for size in SIZES:
        model.zero_grad()
        out = model(images(*size))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        out.mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing


def test_reset_classifier_and_forward_head(variant):
    model = make(variant)
    model.reset_classifier(5)
    x = images(64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.forward_head(feats).shape == (2, 5)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        close(model(x), model.forward_head(feats))
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_channels_last_gives_the_same_outputs(variant):
    model = make(variant)
    x = images(64, 64)
    with torch.no_grad():
        close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


# -- forward_intermediates, features_only -----------------------------------------------------------

INTERMEDIATE_OPTIONS = [
    dict(indices=2),
    dict(indices=[0], norm=True, stop_early=True),
    dict(indices=[0, 1], output_fmt="NLC", return_prefix_tokens=True),
    dict(indices=1, intermediates_only=True),
    dict(indices=[1], output_dict=True, return_prefix_tokens=True),
]


def _shapes(result):
    if isinstance(result, torch.Tensor):
        return tuple(result.shape)
    if isinstance(result, dict):
        return {k: _shapes(v) for k, v in result.items()}
    return [_shapes(r) for r in result]


@pytest.mark.parametrize("options", INTERMEDIATE_OPTIONS, ids=lambda o: ",".join(o))
def test_forward_intermediates_options_match_timm(variant, options):
    model, control = make(variant), make("timm")
    x = images(48, 80)
    with torch.no_grad():
        result = model.forward_intermediates(x, **options)
        assert _shapes(result) == _shapes(control.forward_intermediates(x, **options))
        if not any(options.get(k) for k in ("intermediates_only", "output_dict", "stop_early")):
            close(result[0], model.forward_features(x))


def test_prune_intermediate_layers_keeps_the_taken_features(variant):
    model = make(variant)
    x = images(64, 64)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        model.prune_intermediate_layers([0], prune_head=True)
        assert len(model.blocks) == 1
        close(model.forward_intermediates(x, indices=[0], intermediates_only=True)[0], before[0])


def test_features_only_returns_timms_feature_maps(variant):
    kwargs = dict(features_only=True, out_indices=(0, 1))
    model, control = make(variant, **kwargs), make("timm", **kwargs)
    assert model.feature_info.channels() == control.feature_info.channels()
    assert model.feature_info.reduction() == control.feature_info.reduction()
    x = images(48, 80)
    with torch.no_grad():
        out = model(x)
    assert [tuple(f.shape) for f in out] == [(2, 192, 3, 5)] * 2
    assert all(torch.isfinite(f).all() for f in out)


def test_features_only_backward_with_gradient_checkpointing(variant):
    model = make(variant, features_only=True, out_indices=(0, 1)).train()
    model.model.set_grad_checkpointing(True)  # FeatureGetterNet wraps the model, as in timm
    sum(f.mean() for f in model(images(64, 64))).backward()
    assert all(p.grad is not None for p in model.parameters())


# -- graph tools ------------------------------------------------------------------------------------


def _fx_subject(variant: str) -> torch.nn.Module:
    # plain timm traces with FX only at a fixed size (its dynamic_img_size resampling branches on
    # a traced value); build_model's models trace at any size
    return make("timm", dynamic_img_size=False) if variant == "timm" else make(variant)


def test_fx_symbolic_trace_matches_eager_forward_and_backward(variant):
    model = _fx_subject(variant)
    traced = torch.fx.symbolic_trace(model)
    for size in SIZES if variant != "timm" else SIZES[:1]:
        x = images(*size)
        with torch.no_grad():
            close(traced(x), model(x))
    traced.train()
    traced(images(64, 64)).mean().backward()
    assert all(p.grad is not None for p in traced.parameters())


def test_torchvision_create_feature_extractor(variant):
    model = _fx_subject(variant)
    extractor = create_feature_extractor(model, return_nodes={"blocks.0": "block0", "head": "logits"})
    x = images(64, 64)
    with torch.no_grad():
        out = extractor(x)
        close(out["logits"], model(x))
        tokens = model.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)[0]
        close(out["block0"][:, model.num_prefix_tokens :], tokens)


def test_timm_create_feature_extractor(variant):
    from timm.models import create_feature_extractor as timm_extractor

    model = make(variant)
    x = images(48, 80)
    with torch.no_grad():
        close(timm_extractor(model, {"norm": "out"})(x)["out"], model.forward_features(x))


def test_jit_trace_matches_eager(variant):
    model = make(variant)
    x = images(48, 80)
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        close(traced(x), model(x))


def test_jit_script_works_for_timm_and_is_refused_in_one_line_otherwise(variant):
    model = make(variant)
    if variant == "timm":
        scripted = torch.jit.script(model)
        with torch.no_grad():
            close(scripted(images(64, 64)), model(images(64, 64)))
        return
    with pytest.raises(RuntimeError, match=r"^torch.jit.script is not supported for effvit_deploy models: use torch.jit.trace") as info:
        torch.jit.script(model)
    assert "\n" not in str(info.value)


def test_torch_compile_fullgraph_at_two_sizes(variant):
    # backend="eager": proves dynamo captures one graph (no break) at each size, in seconds on CPU
    torch._dynamo.reset()  # the compile cache of timm's forward is shared by every model built here
    model = make(variant)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        for size in SIZES:
            close(compiled(images(*size)), model(images(*size)))


# -- input handling ---------------------------------------------------------------------------------


def test_dynamic_img_pad_pads_like_timm(variant):
    model = make(variant, dynamic_img_pad=True)
    x = images(70, 50)
    with torch.no_grad():
        out = model(x)
        close(out, model(F.pad(x, (0, 14, 0, 10))))  # timm pads bottom/right with zeros to 80x64
    assert torch.isfinite(out).all()


def test_set_input_size_with_a_new_patch_size_equals_a_model_built_at_it(variant):
    """Regression: layers once read a stale grid after set_input_size(patch_size=...)."""
    model = make(variant)
    model.set_input_size(img_size=(48, 64), patch_size=8)
    built = make(variant, seed=5, img_size=(48, 64), patch_size=8)
    built.load_state_dict(model.state_dict())
    for size in ((48, 64), (64, 40)):
        x = images(*size)
        with torch.no_grad():
            close(model(x), built(x))


def test_set_input_size_equals_a_model_built_at_the_new_size_from_the_same_weights(variant, tmp_path):
    model = make(variant)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model.set_input_size(img_size=96)
    if variant == "timm":
        built = make("timm", seed=5, img_size=96, pretrained=True, pretrained_cfg_overlay={"file": str(path), "num_classes": 10})
    else:
        built = make(variant, seed=5, img_size=96, pretrained=str(path))
        adapted = built.effvit_load_report.adapted
        assert adapted == ([f"blocks.{i}.attn.proj_k" for i in range(2)] if variant == "linformer" else [])
    x = images(96, 96)
    with torch.no_grad():
        close(model(x), built(x))


def test_pretrained_file_is_adapted_to_in_chans_and_num_classes_as_timm_does(variant, tmp_path):
    source = make("timm", seed=3)
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    if variant == "timm":
        model = make("timm", in_chans=1, num_classes=5, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        model = make(variant, in_chans=1, num_classes=5, pretrained=str(path))
        assert "patch_embed.proj.weight" in model.effvit_load_report.adapted
        assert set(model.effvit_load_report.reinitialised_head) == {"head.weight", "head.bias"}
    torch.testing.assert_close(model.patch_embed.proj.weight, adapt_input_conv(1, source.patch_embed.proj.weight))
    assert torch.equal(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_unknown_keyword_is_a_type_error(variant):
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        make(variant, no_such_option=1)


# -- saving, sharing, initialisation ----------------------------------------------------------------


def test_state_dict_round_trip_and_timm_load_checkpoint(variant, tmp_path):
    model, twin = make(variant), make(variant, seed=9)
    twin.load_state_dict(model.state_dict(), strict=True)
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    third = make(variant, seed=11)
    timm.models.load_checkpoint(third, str(path))
    x = images(48, 80)
    with torch.no_grad():
        close(twin(x), model(x))
        close(third(x), model(x))


def test_save_for_hf_then_timm_create_model_local_dir(variant, tmp_path):
    model = make(variant, num_classes=4)
    timm.models.save_for_hf(model, str(tmp_path), safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    if variant != "timm":
        assert config["architecture"] == "effvit_vit"
        assert config["model_args"]["attention"] == variant
        assert config["model_args"]["base_model"] == TINY
        for key, value in BUDGETS[variant].items():
            assert config["model_args"]["attention_kwargs"][key] == (list(value) if isinstance(value, tuple) else value)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert type(loaded) is type(model)
    if variant != "timm":
        assert type(loaded.blocks[0].attn) is ATTENTIONS[variant]
    x = images(48, 80)
    with torch.no_grad():
        close(loaded(x), model(x))
    adapted = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, num_classes=7)  # head re-initialised
    assert adapted.num_classes == 7


def test_whole_model_pickles_and_runs_in_a_spawned_process():
    models = {v: make(v).requires_grad_(False) for v in VARIANTS}  # outputs cross the process boundary
    x = images(48, 80)
    for name, model in models.items():
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        again = torch.load(buffer, weights_only=False)
        with torch.no_grad():
            close(again(x), model(x))
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool, torch.no_grad():
        futures = {name: pool.submit(model, x) for name, model in models.items()}
        for name, future in futures.items():
            close(future.result(timeout=120), models[name](x))


def test_meta_device_then_to_empty_then_init_weights_gives_finite_weights(variant):
    model = make(variant, device="meta", dtype=torch.float64)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in model.parameters())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64, dtype=torch.float64, device="meta"))
    assert out.shape == (1, 10) and out.device.type == "meta"
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    model.init_weights()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.isfinite(tensor).all(), name
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64, dtype=torch.float64))).all()


def test_init_weights_redraws_what_the_constructor_drew(variant):
    model, fresh = make(variant), make(variant)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.zero_()
    model.init_weights()
    built = dict(list(fresh.named_parameters()) + list(fresh.named_buffers()))
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if built[name].std() > 0:  # drawn at construction (constant ones, e.g. zero biases, stay constant)
            assert tensor.std() > 0, name
    for (name, a), (_, b) in zip(model.named_buffers(), fresh.named_buffers()):
        assert torch.equal(a, b), name  # buffers (Performer's features) are deterministic


def test_model_ema_tracks_the_model(variant):
    model = make(variant).train()
    ema = ModelEmaV3(model, decay=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(images(64, 64)).mean().backward()
    optimizer.step()
    ema.update(model)
    for (name, p), e in zip(model.named_parameters(), ema.module.parameters()):
        assert torch.isfinite(e).all(), name
    with torch.no_grad():
        assert torch.isfinite(ema.module(images(48, 80))).all()


# -- gradient checkpointing -------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [((48, 80), (80, 48)), ((32, 32), (64, 64))], ids=["48x80+80x48", "32+64"])
def test_gradient_checkpointing_at_two_sizes_before_one_backward_equals_no_checkpointing(variant, sizes):
    """Regression: recompute once read the grid of the last forward, not its own."""
    grads = []
    for checkpointing in (False, True):
        model = make(variant).train()
        model.set_grad_checkpointing(checkpointing)
        loss = sum(model(images(*size, seed=i)).square().mean() for i, size in enumerate(sizes))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        close(grads[1][name], grad, tol=1e-5)


def test_timm_entry_point_builds_what_build_model_builds():
    torch.manual_seed(0)
    via_timm = timm.create_model(
        "effvit_vit", base_model=TINY, attention="linformer", attention_kwargs=BUDGETS["linformer"],
        num_classes=10, depth=2, img_size=64,
    ).eval()
    direct = make("linformer")
    assert type(via_timm.blocks[0].attn) is ATTENTIONS["linformer"] and via_timm.blocks[0].attn.proj_len == 8
    with torch.no_grad():
        close(via_timm(images(48, 80)), direct(images(48, 80)))
    features = timm.create_model(
        "effvit_vit", base_model=TINY, attention="nystrom", attention_kwargs=BUDGETS["nystrom"],
        depth=2, img_size=64, features_only=True, out_indices=(1,),
    )
    assert [tuple(f.shape) for f in features(images(64, 64))] == [(2, 192, 4, 4)]
