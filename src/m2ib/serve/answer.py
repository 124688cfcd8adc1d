"""The page's "Answer" tab as a plain function: a generative VLM's answer explained
(:func:`explain_answer_page`, over :func:`m2ib.generative.explain_answer`), tested without a server.

Shown when the viewer runs on a generative model (:func:`m2ib.generative.loading.is_generative`):
the image map of the whole answer, one map per answer word (M2IB's ``per_word``), the prompt's
words shaded by their scores (M2IB's ``prompt_side``), and the answer explained written out (the
one typed, or the model's own when the answer box is empty).
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InputError
from ..settings import fields_of
from .callbacks import _caught_warnings, _stem, _warning_lines
from .controls import AUTO, SettingSpec, clean_values
from .limits import MAX_MEGAPIXELS, MAX_TEXT_CHARS, MAX_UPLOAD_MB, read_image
from .render import ELEM, heatmap_image, tokens_html

#: Pictures smaller than this many pixels a side are enlarged (nearest neighbour, a whole factor) for
#: the page, so that a model's small input (LLaVA's 336 px, a test model's 8 px) is not blurred by the browser.
PICTURE_SIDE = 336


class AnswerOutputs(NamedTuple):
    """What one press of "Explain the answer" shows, in the order of the tab's output components
    (then the explanation itself, which the page does not show)."""

    answer: str  # Markdown: the answer explained, where it came from, its tokens
    heatmap: Any  # PIL image: the whole answer's map over the image as the model saw it (enlarged)
    words: list[tuple[Any, str]]  # (PIL image, answer word): a map per word (empty: per_word off)
    prompt: str  # HTML: the prompt's words shaded by their scores (a note when not scored)
    figure: str  # path of the figure PNG
    files: list[str]  # downloads: figure (PNG), maps (.npz), settings and scores (.json)
    status: str  # Markdown: method, model, seconds, warnings
    explanation: Any  # the AnswerExplanation


def registered_answer_methods() -> dict[str, Any]:
    """The answer methods the tab offers: :data:`m2ib.generative.methods.ANSWER_METHODS`, in its order."""
    from ..generative.methods import ANSWER_METHODS

    return dict(ANSWER_METHODS)


def answer_specs(name: str) -> list[SettingSpec]:
    """The controls of answer method ``name``'s settings (its dataclass's defaults)."""
    cls = registered_answer_methods()[name]
    return [
        SettingSpec(f"answer-{name}", f, f.default, f.help, AUTO if f.default is None else None)
        for f in fields_of(cls.Settings)
    ]


def example_prompt(backend: Any) -> str:
    """A prompt this model reads: its own form where its folder's ``m2ib.json`` states one (the
    shipped shapes-vqa: a closed vocabulary), else a LLaVA-style chat turn, else the placeholder
    first, else plain text."""
    own = Path(str(getattr(backend.config, "_name_or_path", "") or "")) / "m2ib.json"
    if own.is_file():
        form = json.loads(own.read_text()).get("prompt")
        if isinstance(form, str) and "{question}" in form:
            return form.format(question="describe the image .")
    token = backend.image_token
    for prompt in (f"USER: {token}\nWhat is in the image? ASSISTANT:", f"{token} What is in the image?"):
        try:
            backend.check_prompt(prompt)
            return prompt
        except InputError:
            continue
    return "What is in the image?"


def _text(value: Any, what: str, empty_ok: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if empty_ok:
            return None
        raise InputError(f"empty {what}: type a question or instruction about the image")
    if not isinstance(value, str):
        raise InputError(f"the {what} must be text")
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(f"the {what} has {len(value)} characters; the limit is {MAX_TEXT_CHARS}")
    return value.strip()


def explain_answer_page(
    backend: Any,
    image: Any,
    prompt: Any,
    answer: Any,
    method: str,
    settings: Mapping[str, Any] | None = None,
    *,
    max_new_tokens: Any = 32,
    workdir: str | os.PathLike | None = None,
    progress: Callable | None = None,
    max_bytes: float = MAX_UPLOAD_MB * 1e6,
    max_pixels: float = MAX_MEGAPIXELS * 1e6,
) -> AnswerOutputs:
    """Explain a generative VLM's answer for the page.

    Args:
        backend: a :class:`~m2ib.generative.base.GenerativeBackend` (``load_generative``).
        image: the uploaded file's path, or a PIL image.
        prompt: the prompt, in the family's form (with its image placeholder).
        answer: the answer to explain; empty or None: the model's own (generated, then explained).
        method: an answer method's name (``ANSWER_METHODS``).
        settings: its settings as the page sends them (``None`` and empty text: the default).
        max_new_tokens: the longest answer generated when ``answer`` is empty (a page number box may send a float).
        workdir: where the downloads are written (a new temporary folder if None).
        progress: ``progress(fraction, desc=...)``, e.g. a ``gr.Progress``.

    Raises:
        InputError: bad input (no image, a prompt without the image slot, an answer the tokenizer
            cannot place, a bad setting); its one line is shown in the page.
    """
    from ..generative import explain_answer
    from ..generative.methods import answer_method

    report = progress or (lambda *a, **k: None)
    started = time.perf_counter()
    pil = read_image(image, max_bytes, max_pixels)
    prompt_text = _text(prompt, "prompt") or ""
    answer_text = _text(answer, "answer", empty_ok=True)
    methods = registered_answer_methods()
    if method not in methods:
        raise InputError(f"unknown answer method {method!r}: choose one of {', '.join(methods)}")
    chosen = answer_method(method).make_settings(**clean_values(methods[method].Settings, settings))
    longest = _whole(max_new_tokens)
    backend.check_prompt(prompt_text)  # before any model work
    if answer_text is not None and backend.image_token in answer_text:
        raise InputError(f"the answer contains the image placeholder {backend.image_token!r}: type it as plain text")
    title = methods[method].title
    todo = f"explaining the answer with {title}" if answer_text else f"generating the answer, then {title}"
    report(0.05, desc=todo)
    with _caught_warnings() as notes:
        try:
            exp = explain_answer(
                backend, pil, prompt_text, answer_text, method=method, max_new_tokens=longest, **chosen.as_dict()
            )
        except InputError as exc:  # the API's wording, in the page's terms
            raise InputError(str(exc).replace("pass answer=TEXT", "type an answer")) from None
    report(0.85, desc="drawing the figure")
    out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="m2ib-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = exp.save(out, f"{_stem(image)}_answer_{method}", figure=True)
    seconds = time.perf_counter() - started
    status = f"{title} · {exp.family} · {seconds:.1f} s" + _warning_lines(notes)
    return AnswerOutputs(
        answer_markdown(exp),
        enlarged(heatmap_image(exp)),
        word_pictures(exp),
        prompt_html(exp),
        str(paths["png"]),
        [str(paths[k]) for k in ("png", "npz", "json")],
        status,
        exp,
    )


def _whole(value: Any) -> int:
    """The page's number box (a float, or None when cleared) as a positive whole number."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"the longest generated answer must be a positive whole number of tokens, got {value!r}")
    return value


def enlarged(picture: Any) -> Any:
    """``picture`` enlarged by the whole factor that brings its longer side to :data:`PICTURE_SIDE` (nearest)."""
    from PIL import Image

    factor = max(1, PICTURE_SIDE // max(picture.size))
    return (
        picture
        if factor == 1
        else picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    )


def word_pictures(exp: Any) -> list[tuple[Any, str]]:
    """Each answer word's map over the image, captioned with the word (none without per-word maps)."""
    from ..viz.overlay import overlay, to_pil

    if exp.word_maps is None:
        return []
    return [(enlarged(to_pil(overlay(exp.image, m))), w) for w, m in zip(exp.words, exp.word_maps, strict=True)]


def answer_markdown(exp: Any) -> str:
    """The answer explained, written out, with where it came from and its tokens."""
    source = "the model's own, generated greedily" if exp.answer_source == "generated" else "as typed"
    tokens = " · ".join(f"`{html.escape(t)}`" for t in exp.answer_tokens)
    words = "" if exp.word_maps is not None else " · no per-word maps (per_word off, or not M2IB)"
    rows, cols = exp.grid_map.shape
    height, width = exp.image_map.shape
    return (
        f"**Answer explained** ({source}):\n\n> {html.escape(exp.answer)}\n\nTokens: {tokens}{words}\n\n"
        f"The maps: {exp.method} over the image as the model saw it ({width} x {height} px), "
        f"on its {rows} x {cols} grid of image tokens."
    )


def prompt_html(exp: Any) -> str:
    """The prompt's words shaded by score over the largest (M2IB's prompt side); a note when not scored."""
    if exp.prompt_scores is None:
        return (
            f'<div id="{ELEM}-answer-prompt-none" style="opacity:0.7;font-style:italic;padding:8px 2px">'
            "the prompt's words are not scored (prompt_side off, or a method other than M2IB)</div>"
        )
    scores = [float(v) for v in exp.prompt_scores]
    top = max(scores, default=0.0)
    return tokens_html(exp.prompt_words, [v / top if top > 0 else 0.0 for v in scores])


__all__ = [
    "PICTURE_SIDE",
    "AnswerOutputs",
    "answer_markdown",
    "answer_specs",
    "enlarged",
    "example_prompt",
    "explain_answer_page",
    "prompt_html",
    "registered_answer_methods",
    "word_pictures",
]
