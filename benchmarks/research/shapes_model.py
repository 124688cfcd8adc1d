"""How good a CLIP is on the shapes world, without attribution: zero-shot accuracy, retrieval,
and the random-weight control (see :mod:`research.shapes_quality`)."""

from __future__ import annotations

import copy

import torch

from m2ib import api
from m2ib.backends.base import Backend
from m2ib.datasets.shapes import caption_matches, class_prompts, make_caption, render_scene, split_seed

from .shapes_pairs import check_n, check_split, scene_size


def zero_shot_accuracy(
    backend: Backend, n_per_class: int = 10, split: str = "test", size: int | None = None, batch_size: int = 64
) -> float:
    """Zero-shot classification accuracy over the 30 colour x shape classes, in [0, 1] (higher is better).

    Class ``k`` of ``class_prompts()`` (canonical order), copy ``j``: the single-object scene
    ``render_scene(split_seed(split, k * n_per_class + j), size, n_objects=(1, 1),
    colours=[colour_k], shapes=[shape_k])``. An image is correct when its highest cosine
    similarity among the 30 prompts is its own class's prompt (ties: the first prompt).
    ``size`` defaults to the model's input size. Chance is 1/30.
    """
    check_split(split)
    check_n(n_per_class, "n_per_class")
    size = scene_size(backend) if size is None else int(size)
    classes = class_prompts()
    images, labels = [], []
    for k, (colour, shape, _prompt) in enumerate(classes):
        for j in range(n_per_class):
            scene = render_scene(
                split_seed(split, k * n_per_class + j), size=size, n_objects=(1, 1), colours=[colour], shapes=[shape]
            )
            images.append(scene.to_pil())
            labels.append(k)
    sims = api.similarity(backend, images, [p for _, _, p in classes], batch_size=batch_size)
    predicted = sims.argmax(dim=1)
    return float((predicted == torch.tensor(labels)).float().mean())


def retrieval_r1(
    backend: Backend,
    n: int = 100,
    split: str = "test",
    n_objects: tuple[int, int] = (2, 2),
    strict: bool = False,
    batch_size: int = 64,
) -> float:
    """Text -> image recall at 1 among ``n`` scenes, in [0, 1] (higher is better).

    Scene ``i`` is ``render_scene(split_seed(split, i), size, n_objects)`` (size: the model's
    input size) and its caption ``make_caption(scene, "all")`` names every object in it. For
    each caption the top image is the one of highest cosine similarity (ties: the first).
    It is a hit when that image contains every (colour, shape) the caption names
    (:func:`caption_matches`): its own scene, or another scene that happens to hold the same
    objects, which the caption describes just as well. ``strict=True`` counts only its own
    scene. Chance is about 1/n.
    """
    check_split(split)
    check_n(n)
    size = scene_size(backend)
    scenes = [render_scene(split_seed(split, i), size=size, n_objects=n_objects) for i in range(n)]
    captions = [make_caption(scene, "all") for scene in scenes]
    sims = api.similarity(
        backend, [s.to_pil() for s in scenes], [c.text for c in captions], batch_size=batch_size
    )  # [images, texts]
    top = sims.argmax(dim=0).tolist()
    if strict:
        hits = [t == j for j, t in enumerate(top)]
    else:
        hits = [caption_matches(captions[j], scenes[t]) for j, t in enumerate(top)]
    return sum(hits) / n


def random_control(backend: Backend, seed: int = 0) -> Backend:
    """The same architecture, tokenizer and preprocessing with freshly initialised random weights.

    The model is deep-copied (``backend.model`` is untouched) and every module is
    re-initialised with the model's own ``_init_weights`` under ``torch.manual_seed(seed)``
    inside ``torch.random.fork_rng`` (the caller's random state is unchanged), so the control
    is the same for a given model and seed. The recommended settings are copied, so the
    control is explained with exactly the trained model's settings.
    """
    model = copy.deepcopy(backend.model)
    if not hasattr(model, "_init_weights"):
        raise ValueError(f"{type(model).__name__} has no _init_weights to re-initialise it with")
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.ndim >= 2}
    tensors = list(model.parameters()) + list(model.buffers())
    for t in tensors:  # transformers skips tensors flagged as loaded from a checkpoint
        if hasattr(t, "_is_hf_initialized"):
            t._is_hf_initialized = False
    for module in model.modules():
        if hasattr(module, "_is_hf_initialized"):
            module._is_hf_initialized = False
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            model.apply(model._init_weights)
    unchanged = [name for name, p in model.named_parameters() if name in before and torch.equal(p, before[name])]
    if unchanged:
        raise RuntimeError(f"re-initialisation left {len(unchanged)} weight matrices unchanged, e.g. {unchanged[0]}")
    control = api.load(model, tokenizer=getattr(backend, "tokenizer", None), dtype=None)
    if hasattr(backend, "preprocessing"):
        control.preprocessing = backend.preprocessing
    control.recommended = copy.deepcopy(backend.recommended)
    control.name = f"{backend.name} (random re-init, seed {seed})"
    return control
