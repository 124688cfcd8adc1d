"""The public entry points: load(), explain(), compare(), similarity()."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backends import Backend, ImageBatch, Modality, TextBatch, load_backend
from .comparison import Comparison
from .errors import InputError, M2IBError, SettingWarning
from .explanation import Explanation
from .inputs import ImageInput, OneImage, check_texts, load_image
from .methods import REGISTRY as METHODS
from .settings_file import SettingsFile, SettingsSource, read_settings


def load(
    model: Any,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    processor: Any = None,
    tokenizer: Any = None,
    settings: SettingsSource | SettingsFile | None = None,
) -> Backend:
    """Load a model for explaining.

    Args:
        model: a built-in name (``"shapes"``, ``"random-tiny"``; see ``m2ib.list_models()``), a
            Hugging Face hub id (``"openai/clip-vit-base-patch32"``), a local directory saved
            with ``save_pretrained``, a ``transformers.CLIPModel``, or a backend.
        device: ``"cpu"``, ``"cuda"``, ...; ``None`` leaves the model where it is.
        dtype: precision of the weights for the attribution, ``"float32"`` by default
            (half-precision checkpoints are upcast); ``"model"`` keeps the model's own.
        processor: a ``CLIPProcessor`` to go with a model object.
        tokenizer: a tokenizer to go with a model object.
        settings: a settings file (an ``m2ib.json`` with ``"recommended": {method: {setting:
            value}}``, or a bare ``{method: {setting: value}}``), or that mapping: for the methods
            it names, its values replace the model's recommended ones (settings given to
            :func:`explain` still win). Checked before the model loads; the backend records where
            they came from (``settings_source``), and so do its results.

    Returns:
        A :class:`~m2ib.backends.Backend`. A model object you pass is never modified: if it
        must move or change precision, m2ib uses a copy; a backend you pass with ``settings``
        is copied, not changed.

    Examples:
        >>> import m2ib
        >>> model = m2ib.load("shapes")  # the shipped 3.7 M-parameter CLIP, offline
        >>> model.geometry.image_size, model.geometry.patch_grid
        ((96, 96), (16, 16))
    """
    chosen = (
        settings if isinstance(settings, SettingsFile) or settings is None else read_settings(settings, dict(METHODS))
    )
    backend = load_backend(model, device=device, dtype=dtype, processor=processor, tokenizer=tokenizer)
    return backend if chosen is None else backend.with_settings(chosen.values, chosen.source)


def _as_list(x: Any) -> tuple[list, bool]:
    """(items, was_single)."""
    if isinstance(x, (list, tuple)):
        return list(x), False
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return list(x), False
    return [x], True


def _pair_up(n_images: int, n_texts: int) -> tuple[list[int], list[int]]:
    if n_images == n_texts:
        return list(range(n_images)), list(range(n_texts))
    if n_images == 1:
        return [0] * n_texts, list(range(n_texts))
    if n_texts == 1:
        return list(range(n_images)), [0] * n_images
    raise InputError(
        f"{n_images} images and {n_texts} texts: give one text per image, "
        "or one image with many texts, or many images with one text"
    )


class _LazyPairs:
    """Lazily preprocessed images and texts, addressed by index (large runs load per chunk)."""

    def __init__(
        self,
        backend: Backend,
        images: Any,
        texts: Any,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ):
        self.backend = backend
        if pixel_values is not None:
            if images is not None:
                raise InputError("give either images or pixel_values, not both")
            height, width = backend.geometry.image_size
            check_pixel_values(pixel_values, (height, width))
            self.images, single_image = None, False
            self.pixel_values = pixel_values
            self.n_images = pixel_values.shape[0]
        else:
            if images is None:
                raise InputError("no image given: pass an image path, a PIL image or a tensor")
            self.images, single_image = _as_list(images)
            self.n_images = len(self.images)
        if input_ids is not None:
            if texts is not None:
                raise InputError("give either texts or input_ids, not both")
            if input_ids.ndim == 1:
                input_ids = input_ids[None]
            self.text_batch_all = backend.text_batch(input_ids, attention_mask)
            self.texts, single_text = None, False
            self.n_texts = input_ids.shape[0]
        else:
            if texts is None:
                raise InputError("no text given: pass a string or a list of strings")
            self.texts, single_text = _as_list(texts)
            check_texts(self.texts)
            self.n_texts = len(self.texts)
        if self.n_images == 0 or self.n_texts == 0:
            raise InputError("no pairs to explain: the image or text list is empty")
        self.single = single_image and single_text
        self.image_index, self.text_index = _pair_up(self.n_images, self.n_texts)

    def __len__(self) -> int:
        return len(self.image_index)

    def chunk(self, start: int, stop: int) -> tuple[ImageBatch, TextBatch]:
        img_rows = self.image_index[start:stop]
        txt_rows = self.text_index[start:stop]
        if self.images is None:
            pixels = self.pixel_values[img_rows].to(self.backend.device)
            images = ImageBatch(pixels, None, tuple("<pixel_values>" for _ in img_rows))
        else:
            unique = sorted(set(img_rows))
            loaded = {i: load_image(self.images[i]) for i in unique}
            pil = [loaded[i][0] for i in img_rows]
            images = self.backend.preprocess_images(pil, [loaded[i][1] for i in img_rows])
        if self.texts is None:
            texts = self.text_batch_all.select(txt_rows)
        else:
            texts = self.backend.tokenize([self.texts[i] for i in txt_rows])
        return images, texts


def check_pixel_values(pixel_values: Any, size: tuple[int, int]) -> None:
    """``pixel_values`` is a finite float tensor [N, 3, H, W] at the model's input size ``size`` (H, W)."""
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        raise InputError(
            f"pixel_values must be a float tensor [N, 3, {size[0]}, {size[1]}], got "
            f"{getattr(pixel_values, 'dtype', type(pixel_values).__name__)}"
        )
    shape = tuple(pixel_values.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[2:] != size:
        raise InputError(
            f"pixel_values must be [N, 3, {size[0]}, {size[1]}] (preprocessed RGB at the model's input "
            f"size), got {list(shape)}; pass images= to have them preprocessed"
        )
    if not bool(torch.isfinite(pixel_values).all()):
        raise InputError("pixel_values holds NaN or inf values")


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


# Return types: one image (not a tensor, which may hold a batch) with one text gives one result; a list or
# tuple of images or of texts gives a list; anything else (a tensor, pixel_values, input_ids) either.
# _Image lets a list of one kind (list[Path], list[PIL.Image.Image]) match, lists being invariant.
_Image = TypeVar("_Image", bound=ImageInput)


@overload
def explain(
    model: Any,
    images: OneImage,
    texts: str,
    *,
    method: str = "m2ib",
    modalities: Sequence[Modality] | None = None,
    pixel_values: None = None,
    input_ids: None = None,
    attention_mask: torch.Tensor | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    device: str | None = None,
    **settings: Any,
) -> Explanation: ...


@overload
def explain(
    model: Any,
    images: list[_Image] | tuple[ImageInput, ...],
    texts: str | Sequence[str] | None = None,
    *,
    method: str = "m2ib",
    modalities: Sequence[Modality] | None = None,
    pixel_values: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    device: str | None = None,
    **settings: Any,
) -> list[Explanation]: ...


@overload
def explain(
    model: Any,
    images: ImageInput | list[_Image] | tuple[ImageInput, ...] | None,
    texts: list[str] | tuple[str, ...],
    *,
    method: str = "m2ib",
    modalities: Sequence[Modality] | None = None,
    pixel_values: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    device: str | None = None,
    **settings: Any,
) -> list[Explanation]: ...


@overload
def explain(
    model: Any,
    images: ImageInput | Sequence[ImageInput] | None = None,
    texts: str | Sequence[str] | None = None,
    *,
    method: str = "m2ib",
    modalities: Sequence[Modality] | None = None,
    pixel_values: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    device: str | None = None,
    **settings: Any,
) -> Explanation | list[Explanation]: ...


def explain(
    model: Any,
    images: ImageInput | Sequence[ImageInput] | None = None,
    texts: str | Sequence[str] | None = None,
    *,
    method: str = "m2ib",
    modalities: Sequence[Modality] | None = None,
    pixel_values: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    device: str | None = None,
    **settings: Any,
) -> Explanation | list[Explanation]:
    """Explain why images and texts match: which image regions and which tokens carry it.

    Args:
        model: what :func:`load` accepts (a loaded backend is fastest for repeated calls).
        images: an image (file path, PIL image, or unnormalised tensor [3, H, W] in [0, 1]),
            or a list of them.
        texts: a string or a list of strings. N images with N texts make N pairs; one image
            with N texts (or N images with one text) pairs the single one with each.
        method: a name from ``m2ib.list_methods()``.
        modalities: which sides to explain: ``("image", "text")``, ``("image",)`` or ``("text",)``;
            ``None``: every side the method can explain (both, except for image-only methods).
        pixel_values: [N, 3, H, W] already preprocessed images, instead of ``images``.
        input_ids: [N, T] token ids (with start/end tokens) instead of ``texts``;
            ``attention_mask`` [N, T] marks real tokens when they are padded.
        negatives: texts the pairs should be told apart from. The target becomes the margin
            ``cos(image, text) - mean_k cos(image, negative_k)`` instead of the cosine, for every
            method that differentiates, optimises or evaluates a target (M2IB's fit term
            included). On the text side the negatives' term does not depend on the text, so
            text maps are those of the plain cosine. Off by default; an error for methods with
            no target (attention rollout).
        batch_size: pairs fitted together (memory grows with it; maps do not depend on it).
        progress: show a progress bar; ``None`` shows one when there is more than one batch.
        device: device for a model given by name.
        **settings: the method's settings, e.g. for M2IB ``vision_layer``, ``text_layer``,
            ``vision_beta``, ``text_beta``, ``var``, ``steps``, ``lr``, ``samples``, ``seed``,
            ``precision``.

    Returns:
        An :class:`Explanation` for a single image and a single text, else a list, one per
        pair. ``image_map`` is [H, W] and ``text_map`` [T], both in [0, 1].

    M2IB is the multi-modal information bottleneck of Wang, Rudner and Wilson, "Visual
    Explanations of Image-Text Representations via Multi-Modal Information Bottleneck
    Attribution" (NeurIPS 2023, https://arxiv.org/abs/2312.17174); its defaults are the paper's
    (block 9 of 12, beta 0.1, var 1, 10 Adam steps of 10 noise samples, lr 1), unless the model
    ships recommended settings (the shapes model does). Each other method's file in
    ``m2ib/methods/`` names its paper.

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene1.png", "a yellow star")
        >>> exp.image_map.shape, exp.tokens
        (torch.Size([96, 96]), ['<|startoftext|>', 'a', 'yellow', 'star', '<|endoftext|>'])
        >>> exps = m2ib.explain("shapes", "examples/scene2.png", ["an orange cross", "a yellow cross"])
        >>> len(exps)
        2
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size={batch_size!r} must be a positive integer")
    algorithm = METHODS.get(method)()
    modalities = tuple(algorithm.modalities if modalities is None else modalities)
    if not modalities or any(m not in ("image", "text") for m in modalities):
        raise InputError(f"modalities={modalities!r}: use ('image', 'text'), ('image',) or ('text',)")
    backend = load(model, device=device)
    if images is not None and pixel_values is None:  # NaFlex: the images' own patch grid
        backend = backend.at_grid_of(list(images) if isinstance(images, (list, tuple)) else [images])
    chosen = algorithm.make_settings(backend, **settings)
    inputs = _LazyPairs(backend, images, texts, pixel_values, input_ids, attention_mask)
    negative_batch = None
    if negatives is not None:
        negative_list = [negatives] if isinstance(negatives, str) else list(negatives)
        if negative_list:
            check_texts(negative_list)
            negative_batch = backend.tokenize(negative_list)
    show = progress if progress is not None else len(inputs) > batch_size
    results: list[Explanation] = []
    with tqdm(total=len(inputs), desc=f"{method}", unit="pair", disable=not show) as bar:
        for start, stop in _chunks(len(inputs), batch_size):
            image_batch, text_batch = inputs.chunk(start, stop)
            results.extend(algorithm.explain(backend, image_batch, text_batch, chosen, modalities, negative_batch))
            bar.update(stop - start)
    warn_problems(method, results, lambda side: algorithm.degenerate_hint(chosen, side))
    return results[0] if inputs.single else results


def warn_problems(
    method: str, results: Sequence[Explanation], hint: Callable[[Modality], str] = lambda side: ""
) -> None:
    """One warning per kind of :meth:`Explanation.problems` among ``results`` (every method's maps pass
    here, so a map that ranks nothing is said), with how many pairs have it, and ``hint(side)``: what
    to change, from the method (:meth:`~m2ib.methods.base.Method.degenerate_hint`)."""
    found: dict[str, tuple[str, list[int]]] = {}
    for i, exp in enumerate(results):
        for kind, problem in exp.problems().items():
            found.setdefault(kind, (problem, []))[1].append(i + 1)
    fields = [f.name for f in dataclasses.fields(METHODS.get(method).Settings)]
    for kind, (problem, pairs) in found.items():
        advice = hint("image" if kind.endswith("image") else "text")
        words = set(re.findall(r"\w+", advice))  # the settings the hint names, for front ends to spell (--lr)
        named = [name for name in fields if name in words]
        where = "" if len(results) == 1 else f" ({len(pairs)} of {len(results)} pairs; pair {pairs[0]})"
        hint_text = advice
        warnings.warn(
            SettingWarning(f"{method}{where}: {problem}" + (f"; {hint_text}" if hint_text else ""), settings=named),
            stacklevel=3,
        )


@overload
def compare(
    model: Any,
    images: OneImage,
    texts: str,
    *,
    methods: str | Sequence[str] = "all",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    modalities: Sequence[Modality] | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    keep_going: bool = False,
    on_method: Callable[[int, str], None] | None = None,
    **inputs: Any,
) -> Comparison: ...


@overload
def compare(
    model: Any,
    images: list[_Image] | tuple[ImageInput, ...],
    texts: str | Sequence[str] | None = None,
    *,
    methods: str | Sequence[str] = "all",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    modalities: Sequence[Modality] | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    keep_going: bool = False,
    on_method: Callable[[int, str], None] | None = None,
    **inputs: Any,
) -> list[Comparison]: ...


@overload
def compare(
    model: Any,
    images: ImageInput | list[_Image] | tuple[ImageInput, ...] | None,
    texts: list[str] | tuple[str, ...],
    *,
    methods: str | Sequence[str] = "all",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    modalities: Sequence[Modality] | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    keep_going: bool = False,
    on_method: Callable[[int, str], None] | None = None,
    **inputs: Any,
) -> list[Comparison]: ...


@overload
def compare(
    model: Any,
    images: ImageInput | Sequence[ImageInput] | None = None,
    texts: str | Sequence[str] | None = None,
    *,
    methods: str | Sequence[str] = "all",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    modalities: Sequence[Modality] | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    keep_going: bool = False,
    on_method: Callable[[int, str], None] | None = None,
    **inputs: Any,
) -> Comparison | list[Comparison]: ...


def compare(
    model: Any,
    images: ImageInput | Sequence[ImageInput] | None = None,
    texts: str | Sequence[str] | None = None,
    *,
    methods: str | Sequence[str] = "all",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    modalities: Sequence[Modality] | None = None,
    negatives: str | Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    keep_going: bool = False,
    on_method: Callable[[int, str], None] | None = None,
    **inputs: Any,
) -> Comparison | list[Comparison]:
    """Explain the same pairs with several methods: a :class:`Comparison` per pair.

    Args:
        model: as for :func:`explain`.
        images: as for :func:`explain`.
        texts: as for :func:`explain`.
        methods: names, a comma list, or ``"all"`` (every registered method).
        settings: each method's settings, by method name (``{"m2ib": {"steps": 5}}``).
        modalities: the sides to explain; each method explains those of them it can (a method
            that can explain none of them is left out). ``None``: every side each method can.
        negatives: passed to the methods that have a target (not attention rollout).
        keep_going: record a method that fails (one line, in ``Comparison.failures``) and go on
            with the others, instead of raising; it raises only when every method fails.
        batch_size: as for :func:`explain`.
        device: as for :func:`explain`.
        on_method: called as ``on_method(index, name)`` before each method runs (progress).
        **inputs: :func:`explain`'s ``pixel_values``, ``input_ids`` and ``attention_mask``.

    Returns:
        A :class:`~m2ib.comparison.Comparison` for a single image and a single text, else a list,
        one per pair. Its figure has one row per method (image-only methods show "n/a" for the
        text); ``save`` writes one ``.png``, one ``.npz`` (keys such as ``chefer/image_map``) and one
        ``.json``.

    Examples:
        >>> import m2ib
        >>> cmp = m2ib.compare("shapes", "examples/scene1.png", "a yellow star", methods="m2ib,chefer")
        >>> list(cmp.explanations)
        ['m2ib', 'chefer']
        >>> cmp.explanations["chefer"].image_map.shape
        torch.Size([96, 96])
    """
    names = METHODS.select(methods if isinstance(methods, str) else ",".join(methods), "methods")
    settings = dict(settings or {})
    strangers = sorted(set(settings) - set(names))
    if strangers:
        raise InputError(f"settings for {', '.join(strangers)}, which is not compared ({', '.join(names)})")
    backend = load(model, device=device)
    results: dict[str, list[Explanation]] = {}
    failures: dict[str, str] = {}
    single = False
    for k, name in enumerate(names):
        cls = METHODS[name]
        sides = None if modalities is None else tuple(m for m in modalities if m in cls.modalities)
        if sides is not None and not sides:
            continue
        if on_method is not None:
            on_method(k, name)
        try:
            out = explain(
                backend,
                images,
                texts,
                method=name,
                modalities=sides,
                batch_size=batch_size,
                negatives=negatives if cls.uses_target else None,
                progress=False,
                **inputs,
                **settings.get(name, {}),
            )
        except Exception as exc:  # noqa: BLE001 - with keep_going, a failing method is a row, not a lost pair
            if not keep_going:
                raise
            failures[name] = one_line(exc)
            continue
        if isinstance(out, Explanation):
            single, results[name] = True, [out]
        else:
            single, results[name] = False, out
    compared = [n for n in names if n in results or n in failures]
    if not compared:
        raise InputError(f"none of {', '.join(names)} can explain the {' and '.join(modalities or ())} side")
    if not results:
        return Comparison(compared, {}, failures)  # raises: every method failed
    pairs = len(next(iter(results.values())))
    comparisons = [Comparison(compared, {m: r[i] for m, r in results.items()}, failures) for i in range(pairs)]
    return comparisons[0] if single else comparisons


def one_line(exc: BaseException) -> str:
    """An error as one line: our own errors' message, others' type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, M2IBError) else f"{type(exc).__name__}: {text}"


def similarity(
    model: Any, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str], *, batch_size: int = 64
) -> torch.Tensor:
    """Cosine similarities [n_images, n_texts] between image and text embeddings.

    Args:
        model: what :func:`load` accepts.
        images: an image (path, PIL image or tensor [3, H, W] in [0, 1]) or a list of them.
        texts: a string or a list of strings.
        batch_size: inputs embedded together (64 by default).

    Examples:
        >>> import m2ib
        >>> m2ib.similarity("shapes", ["examples/scene1.png", "examples/scene2.png"], ["a yellow star", "an orange cross"]).shape
        torch.Size([2, 2])
    """
    backend = load(model)
    image_list, _ = _as_list(images)
    text_list, _ = _as_list(texts)
    check_texts(text_list)
    image_embs, text_embs = [], []
    with backend.attribution_mode(), torch.no_grad():
        for start, stop in _chunks(len(image_list), batch_size):
            loaded = [load_image(x) for x in image_list[start:stop]]
            pixels = backend.preprocess_images([x[0] for x in loaded], [x[1] for x in loaded])
            image_embs.append(F.normalize(backend.embed("image", pixels).float(), dim=-1))
        for start, stop in _chunks(len(text_list), batch_size):
            tokens = backend.tokenize(text_list[start:stop])
            text_embs.append(F.normalize(backend.embed("text", tokens).float(), dim=-1))
    return (torch.cat(image_embs) @ torch.cat(text_embs).T).cpu()
