"""Chefer, rollout, LeGrad, Grad-ECLIP, NIB and RISE against their authors' released code.

Each oracle below re-expresses, in our words and on a transformers CLIP, the computation of the
released file named in its docstring, read at the commit stated there (none of that code is
copied or imported). The authors' conventions are kept where they differ from ours (a logit
target, no row normalisation, a sum-normalised text map); where a difference is a documented
deviation, the test measures it. docs/reference_implementations.md tabulates the outcomes.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import m2ib

from .crosscheck_tools import features, max_abs, relative_error

CHEFER = "hila-chefer/Transformer-MM-Explainability@58eaea85ac9c34aff052f368514b35d2e4c8dd3c"
LEGRAD = "WalBouss/LeGrad@a9edb031422d5f5829d9e6238a1e21feb1972c92"
GRAD_ECLIP = "Cyang-Zhao/Grad-Eclip@5c1b5cc10ce68c9caaabd9711012e892257f9d49"
NIB = "LMBTough/NIB@d4d1138b887e038d926e813c7ead3ddb8d19177c"
RISE = "eclique/RISE@d91ea006d4bb9b7990347fe97086bdc0f5c1fe10"


def eager_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy that returns its attention probabilities, with every weight in the autograd graph."""
    m = copy.deepcopy(model)
    m.set_attn_implementation("eager")
    m.requires_grad_(True)
    return m


def eot(case) -> list[int]:
    return case.backend.pooled_positions("text", case.tokens).tolist()


# --- Chefer et al. (CLIP_explainability.ipynb, ``interpret``) -------------------------------------
def chefer_notebook(case, start_layer: int, logit: bool = True):
    """``interpret``: one_hot = the sum of the diagonal logits (pair i's image with text i); per
    block from ``start_layer`` (-1: the last only): cam = mean_heads(ReLU(dlogit/dA * A)),
    R = R + cam @ R from R = I. Returns (image R[:, 0, 1:], text R [N, T, T])."""
    m = eager_copy(case.model)
    out = m(
        pixel_values=case.pixels,
        input_ids=case.tokens.input_ids,
        attention_mask=case.tokens.attention_mask,
        output_attentions=True,
    )
    logits = out.logits_per_image if logit else out.logits_per_image / m.logit_scale.exp()
    one_hot = logits.diagonal().sum()

    def relevance(attentions):
        start = len(attentions) - 1 if start_layer == -1 else start_layer
        n, _, t, _ = attentions[0].shape
        r = torch.eye(t).expand(n, t, t)
        for i, a in enumerate(attentions):
            if i < start:
                continue
            grad = torch.autograd.grad(one_hot, [a], retain_graph=True)[0]
            cam = (grad * a.detach()).clamp(min=0).mean(1)
            r = r + torch.bmm(cam, r)
        return r.detach()

    return relevance(out.vision_model_output.attentions)[:, 0, 1:], relevance(out.text_model_output.attentions)


def notebook_text(r_text: torch.Tensor, eot_index: int) -> torch.Tensor:
    """``show_heatmap_on_text``: the end token's row, tokens 1 .. eot-1, divided by their sum."""
    row = r_text[eot_index, 1:eot_index]
    return row / row.sum()


@pytest.mark.parametrize("start_layer", [-1, 0])
def test_chefer_matches_the_authors_notebook(case, start_layer):
    """Last block only (the notebook's default): the logit's scale only scales R - I, so the
    maps are equal up to it. Every block (our default): equal with the cosine target; the
    notebook's logit target weighs the products in R differently (the documented deviation)."""
    ours = case.explain("chefer", start_layer=start_layer)
    image, text = chefer_notebook(case, start_layer, logit=start_layer == -1)
    for i, (exp, e) in enumerate(zip(ours, eot(case))):
        want = image[i] if start_layer == 0 else image[i] / image[i].sum()
        got = exp.image_grid.flatten() if start_layer == 0 else exp.image_grid.flatten() / exp.image_grid.sum()
        assert relative_error(got, want) <= 1e-5
        t = exp.text_map_raw[1:e]
        assert relative_error(t / t.sum(), notebook_text(text[i], e)) <= 1e-5
    if start_layer == 0:  # the logit target over several blocks is another map (measured)
        logit_image, _ = chefer_notebook(case, 0, logit=True)
        assert relative_error(logit_image[0] / logit_image[0].sum(), image[0] / image[0].sum()) > 1e-3


# --- attention rollout (``compute_rollout_attention``, VisualBERT/mmf/.../ExplanationGenerator.py) ---
def rollout_authors(attentions, start_layer: int = 0) -> torch.Tensor:
    """mean_heads(A_b) + I for every block (rows not renormalised), multiplied from ``start_layer``."""
    t = attentions[0].shape[-1]
    mats = [a.detach().mean(1) + torch.eye(t) for a in attentions]
    joint = mats[start_layer]
    for a in mats[start_layer + 1 :]:
        joint = a.bmm(joint)
    return joint


@pytest.mark.parametrize("start_layer", [0, 1])
def test_rollout_matches_the_authors_rollout(case, start_layer):
    """Each mean_heads(A) + I has rows summing to 2; ours divides them by 2 (Abnar & Zuidema's
    0.5 A + 0.5 I), so ours times 2^blocks is the authors' product."""
    m = eager_copy(case.model)
    with torch.no_grad():
        out = m(
            pixel_values=case.pixels,
            input_ids=case.tokens.input_ids,
            attention_mask=case.tokens.attention_mask,
            output_attentions=True,
        )
    image = rollout_authors(out.vision_model_output.attentions, start_layer)[:, 0, 1:]  # CLS row, patches
    text = rollout_authors(out.text_model_output.attentions, start_layer)
    blocks = len(out.vision_model_output.attentions) - start_layer
    ours = case.explain("rollout", start_layer=start_layer)
    for i, (exp, e) in enumerate(zip(ours, eot(case))):
        assert relative_error(exp.image_grid.flatten() * 2**blocks, image[i]) <= 1e-5
        n = int(case.tokens.lengths[i])
        assert relative_error(exp.text_map_raw * 2**blocks, text[i, e, :n]) <= 1e-5


# --- LeGrad (legrad/wrapper.py, ``compute_legrad_clip``) -------------------------------------------
def legrad_released(case, i: int, starting_depth: int) -> torch.Tensor:
    """For each block from ``starting_depth``: the intermediate embedding of the mean over every
    token (final norm, projection, unit norm), its similarity with the unit text embedding, the
    gradient w.r.t. that block's attention, ReLU, mean over heads and over query rows, the CLS
    column dropped, upsampled bilinearly by the patch size; summed over blocks, then min-max."""
    m = eager_copy(case.model)
    out = m.vision_model(pixel_values=case.pixels[i : i + 1], output_attentions=True, output_hidden_states=True)
    patch = m.config.vision_config.patch_size
    total = 0
    for layer in range(starting_depth, len(out.attentions)):
        feat = F.normalize(
            m.visual_projection(m.vision_model.post_layernorm(out.hidden_states[layer + 1].mean(1))), dim=-1
        )
        sim = (case.text_unit[i : i + 1] * feat).sum()
        grad = torch.autograd.grad(sim, [out.attentions[layer]], retain_graph=True)[0].clamp(min=0)
        rel = grad.mean(1).mean(1)[:, 1:]
        side = int(rel.shape[-1] ** 0.5)
        total = total + F.interpolate(rel.reshape(1, 1, side, side), scale_factor=patch, mode="bilinear")
    total = total[0, 0].detach()
    return (total - total.min()) / (total.max() - total.min())


@pytest.mark.parametrize("start_layer", [0, -2])
def test_legrad_matches_the_released_wrapper(case, start_layer):
    """start_layer -2 is the wrapper's default layer_index; 0 every block (the paper)."""
    ours = case.explain("legrad", start_layer=start_layer, modalities=("image",))
    depth = start_layer if start_layer >= 0 else case.backend.num_layers("image") + start_layer
    for i, exp in enumerate(ours):
        assert max_abs(exp.image_map, legrad_released(case, i, depth)) <= 1e-5


# --- Grad-ECLIP (grad_eclip_image.ipynb / grad_eclip_text.ipynb) --------------------------------------
def _recorded_attention(tower, blocks: range):
    """Hooks that keep each block's q, k, v (input projections) and attention output (before out_proj)."""
    store, handles = {}, []
    for b in blocks:
        attn = tower.encoder.layers[b].self_attn
        for name in ("q_proj", "k_proj", "v_proj"):
            handles.append(
                getattr(attn, name).register_forward_hook(lambda mod, a, o, key=(name, b): store.__setitem__(key, o))
            )
        handles.append(
            attn.out_proj.register_forward_pre_hook(lambda mod, a, key=("out", b): store.__setitem__(key, a[0]))
        )
    return store, handles


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


def grad_eclip_released(case, modality: str, i: int, n: int) -> torch.Tensor:
    """The notebooks' map for pair ``i`` over the last ``n`` blocks: per block, the gradient of the
    cosine at the pooled token's attention output, times each token's value features, times the
    min-max cosine of the pooled query with each key (image: with the patch keys; text: with every
    key). Image: ReLU per block, then the sum; text: ReLU of the sum, tokens 1 .. eot-1."""
    m = eager_copy(case.model)
    tower = m.vision_model if modality == "image" else m.text_model
    layers = len(tower.encoder.layers)
    store, handles = _recorded_attention(tower, range(layers - n, layers))
    try:
        if modality == "image":
            emb, other, p = features(m.get_image_features(pixel_values=case.pixels[i : i + 1])), case.text_unit, 0
        else:
            batch = case.backend.tokenize([case.texts[i]])  # one text: no padding, as the notebook's context
            emb = features(m.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask))
            other, p = case.image_unit, int(case.backend.pooled_positions("text", batch)[0])
    finally:
        for h in handles:
            h.remove()
    c = F.cosine_similarity(emb, other[i : i + 1], eps=1e-6).sum()
    maps = []
    for b in range(layers - n, layers):
        grad = torch.autograd.grad(c, store[("out", b)], retain_graph=True)[0][0, p]
        q, k, v = (store[(name, b)][0].detach() for name in ("q_proj", "k_proj", "v_proj"))
        keys = slice(1, None) if modality == "image" else slice(None)
        cos = _minmax((F.normalize(q[p], dim=-1) * F.normalize(k[keys], dim=-1)).sum(-1))
        maps.append((grad * v[keys] * cos[:, None]).sum(-1).detach())
    if modality == "image":
        return torch.stack(maps).relu().sum(0)
    return torch.stack(maps).sum(0).relu()[1:p]  # the notebook then divides by the sum, for display


def test_grad_eclip_matches_the_released_notebooks(one_head_case):
    """One head per block: the notebooks' single full-width head is then the model's attention.
    Image: the last block (released default); text: the last two of three (8 of 12, released)."""
    case = one_head_case
    for i in range(len(case.texts)):
        exp = m2ib.explain(case.backend, case.pictures[i], case.texts[i], method="gradeclip")
        assert relative_error(exp.image_grid.flatten(), grad_eclip_released(case, "image", i, 1)) <= 1e-5
        n = exp.settings["text_blocks"]
        assert n == 2
        p = len(exp.text_map_raw) - 1
        assert relative_error(exp.text_map_raw[1:p], grad_eclip_released(case, "text", i, n)) <= 1e-5


# --- NIB (salicncy/nib.py, ``nib_v`` / ``nib_t``) ----------------------------------------------------
def nib_released(case, modality: str, i: int, target_layer: int, steps: int) -> torch.Tensor:
    """Integrated gradients of the hidden states after ``target_layer`` blocks: for i = 1..n the
    tower re-runs from hs * i / n, the cosine with the other side's embedding is differentiated,
    and hs * grad / n is accumulated; summed over channels (image: the patches)."""
    m = eager_copy(case.model)
    tower = m.vision_model if modality == "image" else m.text_model
    if modality == "image":

        def run():
            return features(m.get_image_features(pixel_values=case.pixels[i : i + 1]))

        other = case.text_unit[i : i + 1]
    else:
        batch = case.backend.tokenize([case.texts[i]])  # nib_t runs one text, with no padding mask

        def run():
            return features(m.get_text_features(input_ids=batch.input_ids))

        other = case.image_unit[i : i + 1]
    block = tower.encoder.layers[target_layer - 1]
    store = {}
    handle = block.register_forward_hook(lambda mod, a, o: store.__setitem__("hs", o.detach()))
    with torch.no_grad():
        run()
    handle.remove()
    hs, total = store["hs"], 0
    for step in range(1, steps + 1):
        x = (hs * step / steps).requires_grad_(True)
        handle = block.register_forward_hook(lambda mod, a, o, x=x: x)
        try:
            loss = F.cosine_similarity(other, run(), eps=1e-6).mean()
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(loss, x)
        total = total + hs * grad / steps
    saliency = total.sum(-1)[0]
    return saliency[1:] if modality == "image" else saliency


def test_nib_matches_the_released_code(case):
    """Our layer l is the released target_layer l + 1 (the hidden states after l + 1 blocks).
    Image tolerance 1e-3 (measured 2e-4, 2e-8 absolute): on this random tower the patch scores are
    small sums over channels of larger terms of both signs, so float32 rounding (batched steps,
    another attention kernel) shows; the text side agrees to 1e-7."""
    for i in range(len(case.texts)):
        exp = m2ib.explain(
            case.backend, case.pictures[i], case.texts[i], method="nib", vision_layer=1, text_layer=1, steps=10
        )
        assert relative_error(exp.image_grid.flatten(), nib_released(case, "image", i, 2, 10)) <= 1e-3
        assert relative_error(exp.text_map_raw, nib_released(case, "text", i, 2, 10)) <= 1e-5


# --- RISE (explanations.py, ``RISE.generate_masks`` and ``RISE.forward``) -------------------------------
RISE_SETTINGS = {"masks": 64, "grid": 4, "p_keep": 0.5}


def _sampler(case):
    from m2ib.methods.rise import MaskSampler

    s = RISE_SETTINGS
    return MaskSampler(s["masks"], s["grid"], s["p_keep"], tuple(case.pixels.shape[-2:]), 0, torch.device("cpu"))


def test_rise_matches_the_released_estimator(case):
    """``RISE.forward``: sum_k s(x * M_k) M_k / N / p1, on our masks."""
    n, p1 = RISE_SETTINGS["masks"], RISE_SETTINGS["p_keep"]
    ours = case.explain("rise", modalities=("image",), **RISE_SETTINGS)
    masks = _sampler(case)(0, n)  # [N, H, W]
    h, w = masks.shape[-2:]
    for i, exp in enumerate(ours):
        with torch.no_grad():
            emb = features(case.model.get_image_features(pixel_values=case.pixels[i : i + 1] * masks[:, None]))
        p = F.cosine_similarity(emb, case.text_unit[i : i + 1], eps=1e-6)
        want = (p @ masks.view(n, -1)).view(h, w) / n / p1
        assert relative_error(exp.image_map_raw, want) <= 1e-5


def test_rise_masks_match_the_released_masks_but_at_the_border(case):
    """``RISE.generate_masks``: the grid upsampled bilinearly to (s + 1) cells (skimage's
    resize, order=1), cropped at a random shift. Ours equal skimage's mode='edge'; the released
    mode='reflect' mirrors about the edge pixel, which changes the outer half grid cell of the
    upsampled grid only."""
    transform = pytest.importorskip("skimage.transform")
    sampler = _sampler(case)
    grid, n = RISE_SETTINGS["grid"], RISE_SETTINGS["masks"]
    masks = sampler(0, n)
    h, w = masks.shape[-2:]
    up = ((grid + 1) * sampler.cell[0], (grid + 1) * sampler.cell[1])
    band = [-(-size // (2 * grid)) for size in up]  # half a grid cell of the upsampled grid
    inner = np.zeros(up, dtype=bool)
    inner[band[0] : up[0] - band[0], band[1] : up[1] - band[1]] = True
    differs = 0.0
    for k in range(n):
        dy, dx = int(sampler.dy[k]), int(sampler.dx[k])
        g = sampler.grids[k].numpy()
        edge = transform.resize(g, up, order=1, mode="edge", anti_aliasing=False)[dy : dy + h, dx : dx + w]
        assert np.abs(edge - masks[k].numpy()).max() <= 1e-5
        released = transform.resize(g, up, order=1, mode="reflect", anti_aliasing=False)
        ours_big = F.interpolate(sampler.grids[k][None, None], size=up, mode="bilinear", align_corners=False)[0, 0]
        gap = np.abs(released - ours_big.numpy())
        assert gap[inner].max() <= 1e-5
        differs = max(differs, float(gap.max()))
    assert differs > 0.1  # the border difference is real (a test of the test)
