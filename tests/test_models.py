"""build_model: timm drop-in behaviour, weight loading, any resolution, clear errors."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import TINY_MODEL, tiny_model
from effvit_deploy import ATTENTIONS, build_model
from effvit_deploy.flops import count_flops

TIMM_TENSORS = ("qkv.weight", "qkv.bias", "proj.weight", "mlp.fc1.weight", "mlp.fc2.bias", "norm1.weight", "norm2.bias")


def timm_reference(**kwargs):
    torch.manual_seed(1)
    return timm.create_model(TINY_MODEL, num_classes=10, depth=2, img_size=64, dynamic_img_size=True, **kwargs).eval()


def test_exact_matches_timm_with_the_same_weights():
    ref = timm_reference()
    ours = tiny_model("exact")
    ours.load_state_dict(ref.state_dict(), strict=True)
    for size in ((64, 64), (48, 80)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert (ours(x) - ref(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_timm_weights_load_into_every_variant(tmp_path, suffix):
    ref = timm_reference()
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    for attention in ATTENTIONS:
        model = tiny_model(attention, pretrained=str(path))
        own = model.state_dict()
        for block in range(2):
            for name in TIMM_TENSORS:
                key = f"blocks.{block}.{name}" if not name.startswith(("qkv", "proj")) else f"blocks.{block}.attn.{name}"
                assert torch.equal(own[key], state[key]), (attention, key)
        report = model.effvit_load_report
        assert not report.unused and not report.reinitialised_head
        expected_new = {k for k in own if k not in state}
        assert set(report.new) == expected_new
        assert bool(expected_new) == (attention != "exact"), attention


def test_classifier_of_another_size_is_reinitialised_and_reported(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm_reference().state_dict().items()}, str(path))
    model = tiny_model("exact", num_classes=3, pretrained=str(path))
    assert set(model.effvit_load_report.reinitialised_head) == {"head.weight", "head.bias"}
    assert model.head.out_features == 3


def test_checkpoint_with_wrong_shapes_names_the_tensors(tmp_path):
    path = tmp_path / "wide.safetensors"
    wide = timm.create_model(TINY_MODEL, num_classes=10, depth=2, img_size=64, embed_dim=96, num_heads=3)
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"do not fit .*blocks\.0\.attn\.qkv\.weight: checkpoint \(288, 96\) vs model \(576, 192\)"):
        tiny_model("performer", pretrained=str(path))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tiny_model("exact", pretrained=str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("size", [(224, 224), (160, 256)])
def test_every_variant_trains_at_square_and_non_square_sizes(attention, size):
    model = tiny_model(attention).train()
    grids = []
    model.blocks[0].attn.register_forward_pre_hook(lambda m, a, kw: grids.append(kw["grid"]), with_kwargs=True)
    x = torch.randn(2, 3, *size)
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert grids == [(size[0] // 16, size[1] // 16)]


def test_every_variant_is_deterministic_in_eval_and_finite_under_bf16(attention):
    model = tiny_model(attention).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model(x).float()).all()


def test_a_deep_copy_such_as_ema_computes_the_same_outputs():
    model = tiny_model("atrous")
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 80)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))


def test_unknown_attention_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown attention 'performr'. Did you mean performer.*Valid: atrous, exact"):
        build_model(TINY_MODEL, attention="performr")


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="unknown timm model 'vit_tiny_patch16_22'.*vit_tiny_patch16_224"):
        build_model("vit_tiny_patch16_22")


def test_non_vit_model_is_refused():
    with pytest.raises(ValueError, match="not a timm VisionTransformer"):
        build_model("resnet18")


def test_resolution_not_a_multiple_of_the_patch_is_a_clear_error():
    model = tiny_model("exact")
    with pytest.raises(ValueError, match="input 70x64 is not a multiple of the patch size 16x16: resize or crop it to e.g. 64x64"):
        model(torch.randn(1, 3, 70, 64))


def test_attention_and_model_kwargs_are_routed_by_signature():
    model = tiny_model("nystrom", landmarks=5, embed_dim=96, num_heads=3)
    assert model.blocks[0].attn.landmarks == 5 and model.embed_dim == 96
    assert model.effvit_spec["attention_kwargs"]["landmarks"] == 5
    assert model.effvit_spec["model_kwargs"]["embed_dim"] == 96


def test_masks_are_refused_by_approximations_with_a_clear_error():
    attn = tiny_model("performer").blocks[0].attn
    with pytest.raises(ValueError, match="does not support attention masks"):
        attn(torch.randn(1, 17, 192), attn_mask=torch.zeros(17, 17))


def test_flops_count_cpu_sdpa_like_timms_explicit_matmuls():
    ours = tiny_model("exact")
    ref = timm_reference()
    for block in ref.blocks:
        block.attn.fused_attn = False
    assert count_flops(ours, 224) == count_flops(ref, 224)
    assert count_flops(tiny_model("linformer"), 224) < count_flops(ours, 224)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_classes=-1), ValueError, r"^num_classes=-1 must be >= 0: the number of classes, or 0 to build without a classifier$"),
        (dict(num_classes=2.5), TypeError, r"^num_classes must be an int"),
        (dict(img_size=30), ValueError, r"^img_size=30 is not a multiple of the patch size 16x16: use e.g. img_size=32, or dynamic_img_pad=True$"),
        (dict(img_size=8), ValueError, r"^img_size=8 is not a multiple of the patch size 16x16: use e.g. img_size=16"),
        (dict(attention=None), TypeError, r"^attention must be a mechanism name \(atrous, exact, linformer, nystrom, performer\), got None$"),
        (dict(pretrained=1.5), TypeError, r"^pretrained must be True/False or the path of a weights file, got 1.5$"),
        (dict(frobnicate=3), TypeError, r"^build_model\(\) got an unexpected keyword argument 'frobnicate': not an argument of attention='exact' \(it takes none\) nor of vit_tiny_patch16_224$"),
        (dict(out_indices=(0,)), TypeError, r"^out_indices only apply with features_only=True$"),
    ],
)
def test_bad_arguments_are_one_line_errors_naming_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        build_model(TINY_MODEL, **{"depth": 2, **kwargs})
    assert "\n" not in str(info.value)


def test_pretrained_folder_is_refused_as_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"^pretrained='.*' is a folder, expected a weights file \(.safetensors, .*\): pass the file inside it$"):
        build_model(TINY_MODEL, pretrained=str(tmp_path))


def test_img_size_need_not_be_a_multiple_with_dynamic_img_pad():
    model = build_model(TINY_MODEL, depth=1, img_size=30, dynamic_img_pad=True, num_classes=3)
    assert model(torch.randn(1, 3, 30, 30)).shape == (1, 3)
