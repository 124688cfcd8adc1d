"""Tests for the procedurally rendered shapes world (m2ib.datasets.shapes)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from m2ib.datasets.shapes import (
    BACKGROUND_MIN_DISTANCE,
    COLOURS,
    KINDS,
    OBJECT_NOISE_MAX,
    SHAPES,
    Caption,
    Scene,
    ShapesDataset,
    caption_matches,
    class_prompts,
    collate_scenes,
    make_caption,
    phrase,
    render_scene,
    split_seed,
)

N_COVERAGE = 4000  # scenes for the vocabulary-coverage statistics
N_PIXEL = 300  # scenes whose pixels are checked one by one
QUANT = 0.5 / 255 + 1e-6  # the image is quantised to multiples of 1/255
COLOUR_TOL = 25 / 255  # "has the object's colour" for the pixel-exactness test


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [render_scene(split_seed("train", i)) for i in range(N_COVERAGE)]


def _colour_table() -> torch.Tensor:
    return torch.tensor([COLOURS[c] for c in COLOURS], dtype=torch.float32) / 255.0


def _same_scene(a: Scene, b: Scene) -> bool:
    return (
        a.seed == b.seed and a.objects == b.objects and torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks)
    )


# ---------------------------------------------------------------- vocabulary


def test_vocabulary():
    assert list(COLOURS)[:6] == ["red", "green", "blue", "yellow", "orange", "purple"]
    assert SHAPES == ("circle", "square", "triangle", "star", "cross")
    table = _colour_table()
    # pairwise well separated (max-channel distance)
    dist = (table[:, None] - table[None]).abs().amax(-1)
    dist.fill_diagonal_(1.0)
    assert dist.min() > 2 * COLOUR_TOL + 2 * QUANT
    assert BACKGROUND_MIN_DISTANCE > COLOUR_TOL > OBJECT_NOISE_MAX + QUANT


def test_class_prompts():
    prompts = class_prompts()
    assert len(prompts) == len(COLOURS) * len(SHAPES)
    assert [(c, s) for c, s, _ in prompts] == [(c, s) for c in COLOURS for s in SHAPES]
    for c, s, p in prompts:
        assert p == phrase(c, s) and p.endswith(f" {c} {s}")
    assert phrase("red", "circle") == "a red circle"
    assert phrase("orange", "star") == "an orange star"


# ------------------------------------------------------------ determinism


def test_determinism_and_variation():
    for seed in (0, 1, 12345, split_seed("test", 77)):
        a, b = render_scene(seed), render_scene(seed)
        assert _same_scene(a, b)
        for kind in KINDS:
            assert make_caption(a, kind) == make_caption(b, kind)
            assert make_caption(a, kind, seed=3) == make_caption(b, kind, seed=3)
    images = [render_scene(s).image for s in range(20)]
    for i in range(len(images)):
        for j in range(i):
            assert not torch.equal(images[i], images[j])
    # captions vary with the caption seed
    sc = render_scene(split_seed("train", 3), n_objects=(4, 4))
    texts = {make_caption(sc, "all", seed=k).text for k in range(20)}
    assert len(texts) > 5


def test_no_global_rng_use():
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    py_state = random.getstate()
    sc = render_scene(99)
    for kind in KINDS:
        make_caption(sc, kind)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state


# ---------------------------------------------------------- image and masks


def test_image_format(scenes):
    sc = scenes[0]
    assert sc.image.dtype == torch.float32 and sc.image.shape == (3, 96, 96)
    assert sc.masks.dtype == torch.bool and sc.masks.shape == (len(sc.objects), 96, 96)
    for sc in scenes[:200]:
        assert float(sc.image.min()) >= 0.0 and float(sc.image.max()) <= 1.0
    # to_pil is lossless
    pil = sc.to_pil()
    assert pil.mode == "RGB" and pil.size == (96, 96)
    back = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255.0
    assert torch.allclose(back, sc.image, atol=1e-6)


def test_object_geometry(scenes):
    for sc in scenes:
        n = len(sc.objects)
        assert 1 <= n <= 4
        assert len(set(sc.pairs)) == n  # unique (colour, shape)
        counts = sc.masks.flatten(1).sum(1)
        assert bool((counts > 0).all())
        assert int(sc.masks.sum(0).max()) <= 1  # disjoint
        for obj, m in zip(sc.objects, sc.masks):
            assert obj.colour in COLOURS and obj.shape in SHAPES
            ys, xs = torch.nonzero(m, as_tuple=True)
            x0, y0 = int(xs.min()), int(ys.min())
            assert obj.box == (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)
            x, y, w, h = obj.box
            assert x >= 0 and y >= 0 and x + w <= sc.size and y + h <= sc.size
            assert 0.12 * sc.size <= max(w, h) <= 0.34 * sc.size
        # boxes keep a gap of >= 2 pixels
        for i in range(n):
            for j in range(i):
                xa, ya, wa, ha = sc.objects[i].box
                xb, yb, wb, hb = sc.objects[j].box
                gap_x = max(xb - (xa + wa), xa - (xb + wb))
                gap_y = max(yb - (ya + ha), ya - (yb + hb))
                assert max(gap_x, gap_y) >= 2


def test_masks_are_exactly_the_coloured_pixels(scenes):
    table = _colour_table()  # [C, 3]
    names = list(COLOURS)
    for sc in scenes[:N_PIXEL]:
        pix = sc.image.permute(1, 2, 0)  # [H, W, 3]
        dist = (pix[:, :, None, :] - table).abs().amax(-1)  # [H, W, C]
        union = sc.masks.any(0)
        for ci, colour in enumerate(names):
            expected = torch.zeros_like(union)
            for obj, m in zip(sc.objects, sc.masks):
                if obj.colour == colour:
                    expected |= m
            assert torch.equal(dist[:, :, ci] <= COLOUR_TOL, expected), (sc.seed, colour)
        for obj, m in zip(sc.objects, sc.masks):
            own = dist[:, :, names.index(obj.colour)][m]
            assert float(own.max()) <= OBJECT_NOISE_MAX + QUANT
        # background never comes near any object colour
        if (~union).any():
            assert float(dist[~union].min()) >= BACKGROUND_MIN_DISTANCE - QUANT


def test_backgrounds_vary(scenes):
    means = []
    for sc in scenes[:200]:
        bg = ~sc.masks.any(0)
        means.append(sc.image[:, bg].mean(1))
        # textured and noisy: not flat
        assert float(sc.image[:, bg].std(1).mean()) > 0.01
    means = torch.stack(means)  # [N, 3]
    assert float(means.mean(1).std()) > 0.08  # brightness varies
    tint = means - means.mean(1, keepdim=True)
    assert float(tint.std(0).min()) > 0.01  # hue varies
    assert set(tint.argmax(1).tolist()) == {0, 1, 2}


def test_vocabulary_coverage(scenes):
    combos = Counter(pair for sc in scenes for pair in sc.pairs)
    assert set(combos) == {(c, s) for c in COLOURS for s in SHAPES}
    assert min(combos.values()) >= 200, combos.most_common()[-3:]
    n_objects = Counter(len(sc.objects) for sc in scenes)
    assert set(n_objects) == {1, 2, 3, 4}
    assert min(n_objects.values()) > 0.15 * len(scenes)
    # positions vary over the whole image
    centres = torch.tensor(
        [[o.box[0] + o.box[2] / 2, o.box[1] + o.box[3] / 2] for sc in scenes[:500] for o in sc.objects]
    )
    assert float(centres.min()) < 20 and float(centres.max()) > 76


def test_render_options():
    for size in (64, 128):
        sc = render_scene(7, size=size)
        assert sc.image.shape == (3, size, size) and sc.masks.shape[1:] == (size, size)
    for seed in range(50):
        sc = render_scene(seed, n_objects=(4, 4))
        assert len(sc.objects) == 4
        sc = render_scene(seed, n_objects=(2, 2), colours=["red", "blue"], shapes=["star"])
        assert sorted(sc.pairs) == [("blue", "star"), ("red", "star")]
    with pytest.raises(ValueError):
        render_scene(0, size=32)
    with pytest.raises(ValueError):
        render_scene(0, n_objects=(0, 2))
    with pytest.raises(ValueError):
        render_scene(0, colours=["pink"])
    with pytest.raises(ValueError):
        render_scene(-1)


# ------------------------------------------------------------------ captions


def _check_caption(cap: Caption, sc: Scene) -> None:
    text = cap.text
    assert text.startswith(("a ", "an ")) and text == text.strip()
    named = cap.named()
    assert len(cap.spans) == 2 * len(named)
    n_present = 0
    for k, (c_span, s_span) in enumerate(zip(cap.spans[::2], cap.spans[1::2])):
        assert (c_span.role, s_span.role) == ("colour", "shape")
        for sp in (c_span, s_span):
            assert text[sp.start : sp.end] == sp.word
            # whole words
            assert sp.start == 0 or text[sp.start - 1] == " "
            assert sp.end == len(text) or text[sp.end] in " ,"
        assert c_span.object_index == s_span.object_index
        assert c_span.present == s_span.present == (c_span.object_index >= 0)
        assert named[k] == (c_span.word, s_span.word)
        assert c_span.word in COLOURS and s_span.word in SHAPES
        if c_span.present:
            obj = sc.objects[c_span.object_index]
            assert (obj.colour, obj.shape) == (c_span.word, s_span.word)
            assert cap.objects[n_present] == c_span.object_index
            n_present += 1
        else:
            assert not sc.has(c_span.word, s_span.word)
            assert sc.index_of(c_span.word, s_span.word) == -1
        assert text[c_span.end : s_span.start] == " "
        assert text[: c_span.start].endswith(("a ", "an "))
    assert n_present == len(cap.objects)
    assert cap.absent == tuple((c.word, s.word) for c, s in zip(cap.spans[::2], cap.spans[1::2]) if not c.present)
    # the text is the plain-English join of the phrases
    phrases = [phrase(c, s) for c, s in named]
    if len(phrases) == 1:
        assert text == phrases[0]
    else:
        assert text == ", ".join(phrases[:-1]) + " and " + phrases[-1]


def test_captions(scenes):
    subset_sizes = Counter()
    mixed_first_present = 0
    for sc in scenes[:800]:
        n = len(sc.objects)
        for kind in KINDS:
            cap = make_caption(sc, kind)
            assert cap.kind == kind
            _check_caption(cap, sc)
            if kind == "single":
                assert len(cap.objects) == 1 and cap.absent == ()
            elif kind == "all":
                assert sorted(cap.objects) == list(range(n)) and cap.absent == ()
            elif kind == "subset":
                assert 1 <= len(cap.objects) <= n and len(set(cap.objects)) == len(cap.objects)
                assert cap.absent == ()
                if n >= 2:
                    subset_sizes[len(cap.objects) == 1] += 1
            else:  # mixed
                assert len(cap.objects) == 1 and len(cap.absent) == 1
                colour, shape = cap.absent[0]
                assert not sc.has(colour, shape)
                # default distractor shares no word with anything in the scene
                assert all(o.colour != colour and o.shape != shape for o in sc.objects)
                mixed_first_present += cap.spans[0].present
        cap = make_caption(sc, "mixed", distractor="any")
        _check_caption(cap, sc)
        assert len(cap.objects) == 1 and len(cap.absent) == 1
    frac_one = subset_sizes[True] / (subset_sizes[True] + subset_sizes[False])
    assert 0.5 < frac_one < 0.7
    assert 0.4 < mixed_first_present / 800 < 0.6
    with pytest.raises(ValueError):
        make_caption(scenes[0], "everything")


def test_caption_examples():
    sc = render_scene(0)
    cap = make_caption(sc, "all")
    assert caption_matches(cap, sc)
    # a three-object caption reads "a x y, a x y and a x y"
    sc4 = render_scene(1, n_objects=(3, 3))
    text = make_caption(sc4, "all").text
    assert text.count(",") == 1 and text.count(" and ") == 1


def test_caption_matches(scenes):
    for a, b in zip(scenes[:300], scenes[1:301]):
        for kind in ("single", "subset", "all"):
            assert caption_matches(make_caption(a, kind), a)
        assert not caption_matches(make_caption(a, "mixed"), a)
        cap = make_caption(a, "all")
        assert caption_matches(cap, b) == all(b.has(c, s) for c, s in cap.named())


# ------------------------------------------------------------ splits, dataset


def test_split_seeds_disjoint():
    seeds = {s: {split_seed(s, i) for i in range(10_000)} for s in ("train", "val", "test")}
    assert all(len(v) == 10_000 for v in seeds.values())
    assert not seeds["train"] & seeds["val"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["val"] & seeds["test"]
    # a different base shifts the whole dataset, splits stay disjoint
    shifted = {s: {split_seed(s, i, base=1) for i in range(10_000)} for s in ("train", "val", "test")}
    assert not shifted["train"] & (seeds["train"] | seeds["val"] | seeds["test"])
    assert not shifted["train"] & (shifted["val"] | shifted["test"])
    with pytest.raises(ValueError):
        split_seed("dev", 0)


def test_dataset():
    ds = ShapesDataset("val", length=16, caption_kind="mixed", base_seed=2)
    assert len(ds) == 16
    sc, cap = ds[3]
    assert sc.seed == split_seed("val", 3, 2)
    assert _same_scene(sc, render_scene(split_seed("val", 3, 2)))
    assert cap == make_caption(sc, "mixed") and cap.kind == "mixed"
    assert ds[-1][0].seed == ds[15][0].seed
    with pytest.raises(IndexError):
        ds[16]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_scenes)
    images, batch_scenes, captions = next(iter(loader))
    assert images.shape == (8, 3, 96, 96)
    assert [s.seed for s in batch_scenes] == [ds.seed(i) for i in range(8)]
    assert all(isinstance(c, Caption) for c in captions)
    train = ShapesDataset("train", length=4, size=64, n_objects=(2, 3))
    for sc, cap in train:
        assert sc.size == 64 and 2 <= len(sc.objects) <= 3
        assert cap.kind == "subset"


# ------------------------------------------------- fixed outputs (refactor guard)

# sha256 of _fingerprint(), recorded from the single-module shapes.py before it was split into a
# package (issue #16): the split must render the same pixels, masks, boxes and captions.
RECORDED_FINGERPRINT = "94c47a81a6969a27f918ba8009018166f3ac26c9b05aab57e9cffca7300ab6e2"


def _fingerprint() -> str:
    import hashlib

    h = hashlib.sha256()

    def add(scene: Scene) -> None:
        h.update(np.ascontiguousarray(scene.image.numpy()).tobytes())
        h.update(np.ascontiguousarray(scene.masks.numpy()).tobytes())
        h.update(repr((scene.seed, scene.size, scene.objects)).encode())
        for kind in KINDS:
            h.update(repr(make_caption(scene, kind)).encode())
        h.update(repr(make_caption(scene, "mixed", seed=5, distractor="any")).encode())

    for seed in (0, 1, 7, 12345, split_seed("test", 3), split_seed("train", 10, base=2)):
        add(render_scene(seed))
    for size in (64, 101, 224):
        add(render_scene(split_seed("val", size), size=size, n_objects=(4, 4)))
    add(render_scene(3, n_objects=(2, 3), colours=["red", "blue", "purple"], shapes=["star", "cross"]))
    add(render_scene(4, size=64, n_objects=(1, 1), colours=["orange"]))
    for scene, caption in ShapesDataset("train", length=3, size=80, caption_kind="all", base_seed=1):
        add(scene)
        h.update(repr(caption).encode())
    h.update(repr(class_prompts()).encode())
    return h.hexdigest()


def test_fixed_seed_scenes_render_as_recorded():
    assert _fingerprint() == RECORDED_FINGERPRINT
