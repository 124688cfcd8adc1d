"""What one press of the page's button does, as a plain function: :func:`explain_pair`."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import InputError
from .controls import clean_settings
from .limits import MAX_MEGAPIXELS, MAX_UPLOAD_MB, check_text, read_image
from .render import heatmap_image, tokens_html

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("m2ib.serve")

COMPARE_ALL = "compare all"


class PairOutputs(NamedTuple):
    """What one press of the button shows, in the order of the page's output components."""

    heatmap: Any  # PIL image: the heatmap over the image as the model saw it (None: not explained)
    tokens: str  # HTML: the tokens shaded by their scores
    similarity: str  # cosine similarity of the image and text embeddings, formatted
    figure: str | None  # path of the figure PNG (explanation figure, or the comparison grid)
    files: list[str]  # downloads: figure (PNG), maps (.npz), settings and scores (.json)
    status: str  # Markdown: what was done, and any method that failed


def registered_methods() -> dict[str, Any]:
    """The methods the page offers (and "compare all" runs): the registry, in its order."""
    from ..methods import REGISTRY

    return dict(REGISTRY)


def explain_pair(
    backend: Any,
    image: Any,
    text: Any,
    method: str,
    settings: Mapping[str, Any] | None = None,
    *,
    workdir: str | os.PathLike | None = None,
    progress: Callable | None = None,
    max_bytes: float = MAX_UPLOAD_MB * 1e6,
    max_pixels: float = MAX_MEGAPIXELS * 1e6,
) -> PairOutputs:
    """Explain one image-text pair for the page.

    Args:
        backend: a loaded model (``m2ib.load``).
        image: the uploaded file's path, or a PIL image.
        text: the text to explain.
        method: a name from the method registry, or ``"compare all"``.
        settings: the method's settings (``{"steps": 2, ...}``; ``None`` values mean auto); for
            ``"compare all"``, a mapping from method name to its settings (or one flat mapping:
            each method takes the settings it has).
        workdir: where the downloads are written (a new temporary folder if None).
        progress: ``progress(fraction, desc=...)``, e.g. a ``gr.Progress``.

    Raises:
        InputError: bad input; its message is shown in the page.
    """
    report = progress or (lambda *a, **k: None)
    started = time.perf_counter()
    pil = read_image(image, max_bytes, max_pixels)
    text = check_text(text)
    methods = registered_methods()
    if method != COMPARE_ALL and method not in methods:
        raise InputError(f"unknown method {method!r}: choose one of {', '.join([*methods, COMPARE_ALL])}")
    out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="m2ib-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    source = Path(image).name if isinstance(image, (str, os.PathLike)) else "<uploaded image>"
    if method == COMPARE_ALL:
        return _compare(backend, pil, text, settings or {}, out, _stem(image), source, report, started, methods)
    from ..api import explain

    title = methods[method].title
    report(0.05, desc=f"explaining with {title}")
    with _caught_warnings() as notes:  # e.g. a text longer than the model reads
        exp = explain(backend, pil, text, method=method, progress=False, **clean_settings(method, settings))
    exp.image_source = source
    report(0.85, desc="drawing the figure")
    paths = exp.save(out, f"{_stem(image)}_{method}", figure=True)
    seconds = time.perf_counter() - started
    status = f"{title} · {getattr(backend, 'name', '')} · {seconds:.1f} s" + _warning_lines(notes)
    return PairOutputs(
        heatmap_image(exp),
        _tokens_html(exp),
        f"{exp.similarity:.3f}",
        str(paths["png"]),
        [str(paths[k]) for k in ("png", "npz", "json")],
        status,
    )


def _compare(
    backend: Any,
    pil: Image.Image,
    text: str,
    settings: Mapping[str, Any],
    out: Path,
    stem: str,
    source: str,
    report: Callable,
    started: float,
    methods: Mapping[str, Any],
) -> PairOutputs:
    """Every method in turn on one pair: one Comparison (a failing method is an empty row)."""
    from ..api import compare

    per_method = {}
    for name, cls in methods.items():
        if isinstance(settings.get(name), Mapping):  # per method, as the page sends them
            own = settings[name]
        else:  # one flat mapping: each method takes the settings it has
            names = {f.name for f in dataclasses.fields(cls.Settings)}
            own = {key: value for key, value in settings.items() if key in names}
        try:
            per_method[name] = clean_settings(name, own)
        except InputError as exc:
            raise InputError(f"{cls.title}: {exc}") from None

    def on_method(k: int, name: str) -> None:
        report(0.05 + 0.8 * k / len(methods), desc=f"{methods[name].title} ({k + 1} of {len(methods)})")

    with _caught_warnings() as notes:
        comparison = compare(
            backend, pil, text, methods=list(methods), settings=per_method, keep_going=True, on_method=on_method
        )
    for name, reason in comparison.failures.items():
        log.warning("compare all: %s failed: %s", name, reason)
    for exp in comparison.explanations.values():
        exp.image_source = source
    report(0.9, desc="drawing the comparison")
    paths = comparison.save(out, f"{stem}_compare", figure=True)
    first = comparison.first
    seconds = time.perf_counter() - started
    status = (
        f"compared {len(comparison.explanations)} of {len(methods)} methods · {getattr(backend, 'name', '')} "
        f"· {seconds:.1f} s; the heatmap and the tokens above are {methods[first.method].title}'s"
    )
    if comparison.failures:
        status += "\n\n" + "\n".join(
            f"- failed: {html.escape(methods[name].title)}: {html.escape(reason)}"
            for name, reason in comparison.failures.items()
        )
    status += _warning_lines(notes)
    return PairOutputs(
        heatmap_image(first),
        _tokens_html(first),
        f"{first.similarity:.3f}",
        str(paths["png"]),
        [str(paths[k]) for k in ("png", "npz", "json")],
        status,
    )


@contextlib.contextmanager
def _caught_warnings() -> Iterator[list[str]]:
    """Collect the first line of each UserWarning raised inside (shown under the status)."""
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield lines
        finally:
            lines += [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, UserWarning)]


def _tokens_html(exp: Any) -> str:
    """The text panel: the words as the figure shows them, shaded by their scores."""
    words, shading, special = exp.display_words()
    return tokens_html(words, None if shading is None else [float(v) for v in shading], special)


def _stem(image: Any) -> str:
    from ..pairs import output_stem

    return output_stem(None, str(image)) if isinstance(image, (str, os.PathLike)) else "image"


def _warning_lines(lines: Sequence[str]) -> str:
    return "".join(f"\n\n⚠ {html.escape(line)}" for line in dict.fromkeys(lines))
