"""Tests for m2ib.viz.overlay (torch only) and m2ib.viz.figure with its layout and canvas (matplotlib)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from m2ib.viz.overlay import colormap, overlay, to_pil


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------
def _scene(n: int = 96):
    g = torch.Generator().manual_seed(0)
    img = (0.5 + 0.08 * torch.randn(3, n, n, generator=g)).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    disc = ((xx - 32) ** 2 + (yy - 40) ** 2) < 16**2
    img[0][disc], img[1][disc], img[2][disc] = 0.9, 0.12, 0.1
    heat = torch.exp(-(((xx - 32) ** 2 + (yy - 40) ** 2) / (2 * 12.0**2)))
    return img, heat


TOKENS = ["<start>", "a", "red", "circle", "and", "a", "blue", "star", "<end>"]
TMAP = torch.tensor([0.0, 0.05, 0.92, 0.71, 0.08, 0.04, 0.31, 0.22, 0.0])


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.fixture(scope="module")
def fig_mod():
    pytest.importorskip("matplotlib")
    from m2ib.viz import figure

    return figure


def _check_rgb(im, min_w=200, min_h=100):
    from PIL import Image

    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    w, h = im.size
    assert min_w <= w <= 6000 and min_h <= h <= 6000, im.size
    return w, h


# --------------------------------------------------------------------------
# overlay.py
# --------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["overlay", "style", "layout", "canvas", "figure"])
def test_viz_modules_do_not_import_matplotlib(module):
    """matplotlib is optional: importing any viz module (m2ib.explanation imports figure) must not need it."""
    code = f"import sys, m2ib.viz.{module}; print('matplotlib' in sys.modules)"
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(sys.modules["m2ib.viz.overlay"].__file__)))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["jet", "inferno", "gray"])
def test_colormap_shape_range_dtype(name):
    v = torch.rand(17, 23)
    rgb = colormap(v, name)
    assert rgb.shape == (3, 17, 23)
    assert rgb.dtype == torch.float32
    assert torch.isfinite(rgb).all()
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_colormap_endpoints():
    ends = torch.tensor([[0.0, 1.0]])
    jet = colormap(ends, "jet")[:, 0]
    # OpenCV COLORMAP_JET / grad-cam look: dark blue -> dark red
    assert torch.allclose(jet[:, 0], torch.tensor([0.0, 0.0, 0.5]))
    assert torch.allclose(jet[:, 1], torch.tensor([0.5, 0.0, 0.0]))
    mid = colormap(torch.tensor([[0.5]]), "jet")[:, 0, 0]
    assert mid[1] == 1.0 and mid[0] == mid[2]  # green-cyan-yellow centre
    inf = colormap(ends, "inferno")[:, 0]
    assert inf[:, 0].max() < 0.02  # near black
    assert inf[0, 1] > 0.95 and inf[1, 1] > 0.95 and 0.55 < inf[2, 1] < 0.75  # pale yellow
    gray = colormap(ends, "gray")[:, 0]
    assert torch.equal(gray[:, 0], torch.zeros(3)) and torch.equal(gray[:, 1], torch.ones(3))


def test_inferno_close_to_reference():
    mpl = pytest.importorskip("matplotlib")
    x = torch.linspace(0, 1, 257)
    ours = colormap(x[None], "inferno")[:, 0].T
    ref = torch.tensor(mpl.colormaps["inferno"](x.numpy())[:, :3], dtype=torch.float32)
    assert (ours - ref).abs().max() < 0.03


def test_colormap_monotone_jet_hue_and_sanitises():
    v = torch.tensor([[float("nan"), float("inf"), float("-inf"), -3.0, 7.0]])
    rgb = colormap(v)
    assert torch.isfinite(rgb).all()
    assert torch.allclose(rgb[:, 0, 0], colormap(torch.zeros(1, 1))[:, 0, 0])  # NaN -> 0
    assert torch.allclose(rgb[:, 0, 1], colormap(torch.ones(1, 1))[:, 0, 0])  # +inf -> 1
    assert torch.allclose(rgb[:, 0, 3], colormap(torch.zeros(1, 1))[:, 0, 0])  # clamped
    assert torch.allclose(rgb[:, 0, 4], colormap(torch.ones(1, 1))[:, 0, 0])
    with pytest.raises(ValueError):
        colormap(torch.zeros(2, 2), "nope")


def test_overlay_shape_range_and_blend(scene):
    img, heat = scene
    out = overlay(img, heat, alpha=0.5)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    expected = 0.5 * img + 0.5 * colormap(heat)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(overlay(img, heat, alpha=0.0), img)
    assert torch.allclose(overlay(img, heat, alpha=1.0), colormap(heat))


def test_overlay_resizes_smaller_heatmap():
    img = torch.rand(3, 64, 48)
    small = torch.rand(7, 7)
    out = overlay(img, small)
    assert out.shape == (3, 64, 48)
    # a constant map stays constant after resizing
    const = overlay(img, torch.full((4, 4), 0.25), alpha=1.0)
    assert torch.allclose(const, colormap(torch.full((64, 48), 0.25)), atol=1e-6)
    # leading singleton dims are accepted ([1, 1, h, w] from an interpolate call)
    assert overlay(img, small[None, None]).shape == (3, 64, 48)


def test_overlay_nan_map_and_bad_image_shape():
    img = torch.rand(3, 8, 8)
    m = torch.full((8, 8), float("nan"))
    out = overlay(img, m)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError):
        overlay(torch.rand(8, 8, 3, 2), m)


def test_to_pil_roundtrip():
    img = torch.rand(3, 10, 14)
    pil = to_pil(img)
    assert pil.mode == "RGB" and pil.size == (14, 10)
    back = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6


# --------------------------------------------------------------------------
# figure.py
# --------------------------------------------------------------------------
def test_explanation_both_maps(fig_mod, scene):
    img, heat = scene
    im = fig_mod.explanation_figure(
        img,
        heat,
        TOKENS,
        TMAP,
        title="a red circle and a blue star",
        subtitle="similarity 0.312 · layer 9/9 · beta 0.1",
        special_tokens=(0, 8),
    )
    w, h = _check_rgb(im, 800, 300)
    assert w > h  # image panels side by side with the text panel
    again = fig_mod.explanation_figure(
        img,
        heat,
        TOKENS,
        TMAP,
        title="a red circle and a blue star",
        subtitle="similarity 0.312 · layer 9/9 · beta 0.1",
        special_tokens=(0, 8),
    )
    assert again.size == im.size and again.tobytes() == im.tobytes()  # deterministic
    # the heatmap peak (dark red) is visible on the overlay panel
    px = torch.from_numpy(np.array(im)).int()
    reddish = (px[..., 0] > 150) & (px[..., 1] < 60) & (px[..., 2] < 60)
    assert reddish.sum() > 100


def test_explanation_image_only(fig_mod, scene):
    img, heat = scene
    full = fig_mod.explanation_figure(img, heat, TOKENS, TMAP)
    only = fig_mod.explanation_figure(img, heat, None, None, title="image only")
    w, h = _check_rgb(only, 300, 200)
    assert w < full.size[0]


def test_explanation_text_only(fig_mod, scene):
    img, _ = scene
    full = fig_mod.explanation_figure(img, _scene()[1], TOKENS, TMAP)
    only = fig_mod.explanation_figure(img, None, TOKENS, TMAP, special_tokens=(0, -1))
    w, h = _check_rgb(only, 200, 40)
    assert w < full.size[0] and h < full.size[1]


def test_explanation_nothing_to_explain_shows_image(fig_mod, scene):
    img, _ = scene
    _check_rgb(fig_mod.explanation_figure(img, None, None, None), 150, 150)


def test_explanation_long_caption_wraps(fig_mod, scene):
    img, heat = scene
    words = (
        "a photograph of a small red circle resting on a noisy grey background next to a bright "
        "blue five pointed star while several other shapes float over a field of static"
    ).split()
    toks = ["<start>"] + (words * 3)[:78] + ["<end>"]
    assert len(toks) == 80
    scores = torch.linspace(0, 1, 80)
    short = fig_mod.explanation_figure(img, heat, TOKENS, TMAP)
    im = fig_mod.explanation_figure(img, heat, toks, scores, title=" ".join(toks[1:-1]), special_tokens=(0, 79))
    w, h = _check_rgb(im, 800, 300)
    # wrapping grows the figure downwards, not sideways
    assert w < 1.35 * short.size[0]
    assert h > short.size[1]
    # text only, wider panel, still bounded
    t = fig_mod.explanation_figure(img, None, toks, scores, title=" ".join(toks))
    tw, th = _check_rgb(t, 400, 200)
    assert tw <= 7 * 150 and th > tw / 4


def test_token_layout_fits_panel(fig_mod):
    # every token cell lies inside the panel width, lines never overlap
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    from m2ib.viz.layout import Ruler, layout_tokens
    from m2ib.viz.style import Fonts

    fig = Figure(dpi=150)
    ruler = Ruler(FigureCanvasAgg(fig).get_renderer(), 150)
    fonts = Fonts(FontProperties)
    toks = ["supercalifragilisticexpialidocious" * 4, "a", "$x^2_\\"] + ["word"] * 60
    block = layout_tokens(ruler, fonts, toks, {0}, 3.0)
    assert block.n_lines > 5
    assert block.width <= 3.0 + 1e-9
    for c in block.cells:
        assert c.x >= 0 and c.x + c.w <= 3.0 + 1e-9
    assert block.cells[0].text.endswith("…")  # over-long token is shortened
    assert block.pitch > block.box_h


def test_explanation_mathtext_and_unicode_tokens(fig_mod, scene):
    img, heat = scene
    toks = ["<start>", "$x^2_\\", "$", "^", "_", "\\", "a$b$c", "naïve", "café→", "α-β", "日本", "<end>"]
    scores = torch.tensor([0, 1, 0.5, 0.3, 0.7, 0.2, 0.9, 0.4, 0.6, float("nan"), 0.1, 0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        im = fig_mod.explanation_figure(
            img,
            heat,
            toks,
            scores,
            title="math $x^2_\\ and $a$",
            subtitle="$50 \\ ^_^",
            special_tokens=(0, -1),
        )
    _check_rgb(im, 800, 300)


def test_explanation_boxes(fig_mod, scene):
    img, heat = scene
    plain = fig_mod.explanation_figure(img, heat, TOKENS, TMAP)
    boxed = fig_mod.explanation_figure(img, heat, TOKENS, TMAP, boxes=[(16, 24, 32, 32), (60.5, 50, 20, 30)])
    assert boxed.size == plain.size
    assert boxed.tobytes() != plain.tobytes()


def test_explanation_input_checks(fig_mod, scene):
    img, heat = scene
    with pytest.raises(ValueError):
        fig_mod.explanation_figure(img, heat, TOKENS[:-1], TMAP)
    with pytest.raises(ValueError):
        fig_mod.explanation_figure(img, heat, None, TMAP)
    with pytest.raises(ValueError):
        fig_mod.explanation_figure(img, heat, TOKENS, TMAP, special_tokens=(42,))


def test_explanation_nan_maps_and_odd_shapes(fig_mod):
    img = torch.rand(3, 40, 120)
    hm = torch.full((5, 5), float("nan"))
    tm = torch.tensor([float("nan"), 2.0, -1.0])
    im = fig_mod.explanation_figure(img, hm, ["x", "y", "z"], tm, dpi=100)
    _check_rgb(im, 300, 100)
    tall = fig_mod.explanation_figure(torch.rand(3, 300, 30), torch.rand(300, 30), None, None, dpi=72)
    _check_rgb(tall, 100, 100)


def test_comparison_three_rows(fig_mod, scene):
    img, heat = scene
    rows = [
        ("M2IB", heat, TMAP),
        ("Grad-CAM", torch.rand(7, 7), torch.rand(9)),
        ("Saliency", torch.rand(96, 96), None),
    ]
    im = fig_mod.comparison_figure(img, rows, TOKENS, title="a red circle and a blue star", special_tokens=(0, 8))
    w, h = _check_rgb(im, 800, 600)
    one = fig_mod.comparison_figure(img, rows[:1], TOKENS, special_tokens=(0, 8))
    assert one.size[1] < h  # rows stack vertically
    # image-only and text-only comparisons
    _check_rgb(fig_mod.comparison_figure(img, [("a", heat, None), ("b", None, None)], None, boxes=[(1, 2, 30, 30)]))
    _check_rgb(fig_mod.comparison_figure(img, [("a", None, TMAP), ("b", None, TMAP)], TOKENS), 150, 60)
    with pytest.raises(ValueError):
        fig_mod.comparison_figure(img, [], TOKENS)


def test_missing_matplotlib_message(fig_mod, scene, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    img, heat = scene
    with pytest.raises(ImportError, match=r"pip install 'm2ib\[figures\]'"):
        fig_mod.explanation_figure(img, heat, None, None)


def test_save_png_atomic(fig_mod, scene, tmp_path):
    from PIL import Image

    img, heat = scene
    im = fig_mod.explanation_figure(img, heat, TOKENS, TMAP)
    out = tmp_path / "sub" / "fig.png"
    fig_mod.save_png(im, out)
    fig_mod.save_png(im, str(out))  # overwriting works too
    assert sorted(os.listdir(out.parent)) == ["fig.png"]  # no temp file left
    with Image.open(out) as back:
        back.load()
        assert back.size == im.size and back.mode == "RGB"
        assert back.tobytes() == im.tobytes()

    class Broken:
        def save(self, fh, format=None):
            fh.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        fig_mod.save_png(Broken(), out)
    assert sorted(os.listdir(out.parent)) == ["fig.png"]
    with Image.open(out) as back:  # the old file is untouched
        assert back.size == im.size


def test_saved_figure_has_the_drawn_pixels_at_the_fast_level(tmp_path):
    """save_figure writes PNGs at zlib level 1 (a quarter of the default's time): lossless, so the
    file holds exactly the drawn pixels."""
    from PIL import Image

    from m2ib.results import PNG_LEVEL, save_figure

    g = torch.Generator().manual_seed(0)
    drawn = to_pil(torch.rand(3, 64, 96, generator=g))
    path = save_figure(tmp_path / "f.png", lambda: drawn)
    assert PNG_LEVEL == 1
    with Image.open(path) as saved:
        assert saved.size == drawn.size and np.array_equal(np.asarray(saved), np.asarray(drawn))
    default = tmp_path / "default.png"
    drawn.save(default, format="PNG")
    assert path.read_bytes() != default.read_bytes()  # not the default level
