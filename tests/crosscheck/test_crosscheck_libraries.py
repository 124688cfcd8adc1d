"""Saliency, Grad-CAM and Kernel SHAP against captum and pytorch-grad-cam, on the same pixels and target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .crosscheck_tools import ImageScore, features, max_abs, pearson, relative_error


def _image_score(case) -> ImageScore:
    return ImageScore(
        case.model, lambda px: features(case.model.get_image_features(pixel_values=px)), case.text_unit
    ).eval()


# --- saliency = captum Saliency -----------------------------------------------------------------
def test_saliency_equals_captum(case):
    captum = pytest.importorskip("captum.attr")
    ours = case.explain("saliency")
    want = captum.Saliency(_image_score(case)).attribute(case.pixels.clone(), abs=True).amax(1)  # channels: max
    for exp, ref in zip(ours, want):
        assert relative_error(exp.image_map_raw, ref) <= 1e-5
    # text: captum's gradient at the embedding layer's output (token + position), L2 over channels
    model, tokens = case.model, case.tokens

    def text_score(ids):
        emb = features(model.get_text_features(input_ids=ids, attention_mask=tokens.attention_mask))
        return F.cosine_similarity(emb, case.image_unit, eps=1e-6)

    grad = captum.LayerGradientXActivation(text_score, model.text_model.embeddings, multiply_by_inputs=False)
    want_t = grad.attribute(tokens.input_ids).norm(dim=-1) * tokens.attention_mask
    for exp, ref, n in zip(ours, want_t, tokens.lengths.tolist()):
        assert relative_error(exp.text_map_raw, ref[:n]) <= 1e-5


# --- Grad-CAM = pytorch-grad-cam GradCAM ----------------------------------------------------------
def _vit_reshape(rows: int, cols: int, prefix: int = 1):
    """The usual ViT reshape_transform: drop the class token, fold the patches into [N, C, rows, cols]."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        t = t[0] if isinstance(t, tuple) else t
        return t[:, prefix:].reshape(t.shape[0], rows, cols, t.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def _library_gradcam(score: torch.nn.Module, layer: torch.nn.Module, pixels: torch.Tensor, reshape=None):
    cam_lib = pytest.importorskip("pytorch_grad_cam")
    with cam_lib.GradCAM(model=score, target_layers=[layer], reshape_transform=reshape) as cam:
        # [N, H, W]: ReLU, min-max, cv2's bilinear resize to the input, min-max again (its one-layer path)
        return cam(input_tensor=pixels.clone(), targets=[lambda out: out] * len(pixels))


@pytest.mark.parametrize("layer", [1, 2])
def test_gradcam_equals_pytorch_grad_cam_on_a_vit(case, layer):
    want = _library_gradcam(
        _image_score(case), case.model.vision_model.encoder.layers[layer], case.pixels, _vit_reshape(4, 4)
    )
    ours = case.explain("gradcam", vision_layer=layer, modalities=("image",))
    every = case.explain("gradcam", vision_layer=layer, tokens="all", modalities=("image",))
    for exp, exp_all, ref in zip(ours, every, want):
        # our map (bilinear upsampling of the grid, then min-max) is the library's to float precision
        assert max_abs(exp.image_map, ref) <= 1e-5
        # the class token in the mean (tokens="all") is another map: the test can tell them apart
        assert max_abs(exp_all.image_map, ref) > 1e-2


def test_gradcam_equals_pytorch_grad_cam_on_openclip_vit_and_resnet():
    from test_backends_families import build_open_clip

    pytest.importorskip("pytorch_grad_cam")
    for kind in ("vit", "resnet"):
        model, backend, encode_image, _ = build_open_clip(kind)
        size = backend.geometry.image_size
        g = torch.Generator().manual_seed(0)
        pictures = [torch.rand(3, *size, generator=g) for _ in range(2)]
        texts = ["a red circle", "a blue star"]
        from m2ib.inputs import load_image

        pixels = backend.preprocess_images([load_image(p)[0] for p in pictures]).pixel_values
        with torch.no_grad():
            text_unit = F.normalize(backend.embed("text", backend.tokenize(texts)).float(), dim=-1)
        score = ImageScore(model, encode_image, text_unit).eval()
        if kind == "vit":  # block 1's output; OpenCLIP's blocks run batch-first
            layer, target, reshape = 1, model.visual.transformer.resblocks[1], _vit_reshape(4, 4)
        else:  # the last stage, as pytorch-grad-cam runs ResNets (no reshape)
            layer, target, reshape = 3, model.visual.layer4, None
        want = _library_gradcam(score, target, pixels, reshape)
        import m2ib

        ours = m2ib.explain(backend, pictures, texts, method="gradcam", vision_layer=layer, modalities=("image",))
        for exp, ref in zip(ours, want):
            assert max_abs(exp.image_map, ref) <= 1e-5, kind


# --- Kernel SHAP vs captum KernelShap ----------------------------------------------------------------
def _cells(h: int, w: int, grid: int) -> torch.Tensor:
    """Our cell partition as a captum feature mask [1, 1, H, W] (cell index, row-major)."""
    return ((torch.arange(h) * grid // h)[:, None] * grid + (torch.arange(w) * grid // w)[None, :])[None, None]


@pytest.mark.slow
def test_kernelshap_exact_agrees_with_captum_kernelshap(case):
    captum = pytest.importorskip("captum.attr")
    grid = 3
    exact = case.explain("kernelshap", grid=grid, samples=2**9, modalities=("image",))
    assert exact[0].info["image"]["exact"]
    score = _image_score(case)
    h, w = case.pixels.shape[-2:]
    mask = _cells(h, w, grid).expand(1, 3, h, w)
    for i, exp in enumerate(exact):
        one = ImageScore(score.model, score.encode, case.text_unit[i : i + 1])
        torch.manual_seed(0)  # captum draws its coalitions from torch's global generator
        ref = captum.KernelShap(one).attribute(
            case.pixels[i : i + 1], baselines=0.0, feature_mask=mask, n_samples=3000, perturbations_per_eval=500
        )
        cells = mask[0, 0].flatten()
        per_cell = torch.stack([ref[0, 0].flatten()[cells == c][0] for c in range(grid * grid)])
        assert pearson(exp.image_grid.flatten(), per_cell) >= 0.99


def test_kernelshap_sampled_within_its_stated_error(case):
    """The docstring's figure: 64 sampled coalitions of 9 cells correlate r >= 0.99 with the exact values."""
    exact = case.explain("kernelshap", grid=3, samples=2**9, modalities=("image",))
    for seed in range(5):
        sampled = case.explain("kernelshap", grid=3, samples=64, seed=seed, modalities=("image",))
        for s, e in zip(sampled, exact):
            assert not s.info["image"]["exact"]
            assert pearson(s.image_grid, e.image_grid) >= 0.99
