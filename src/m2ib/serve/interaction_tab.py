"""The "Word-region interactions" tab: its components, wired to the plain functions of
:mod:`m2ib.serve.interplay` (the Interaction and the View live in per-session ``gr.State``)."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import M2IBError
from .controls import name_api_parameters, reported, settings_accordion
from .environment import accepted
from .interplay import (
    SELECTED,
    InteractionCache,
    View,
    click_image,
    compute_interaction,
    interaction_specs,
    registered_interactions,
    select_phrase,
    select_word,
)
from .limits import KEEP_OUTPUTS_S, prune
from .render import ELEM, signed_tokens_html

log = logging.getLogger("m2ib.serve")
IX = f"{ELEM}-ix"  # prefix of this tab's elem_ids


def interaction_tab(
    gr, backend: Any, runs: Path, limits: dict[str, float], scenes: list[tuple[str, str]], errors: Any
) -> dict[str, Any]:
    """Lay out the tab (inside an open ``gr.Tab``) and wire it; returns its setting keys.

    ``errors(message)`` makes the page's error; ``scenes`` are (image, caption) examples.
    """
    methods = registered_interactions()
    specs = {name: interaction_specs(name) for name in methods}
    keys = [(name, s.name) for name in methods for s in specs[name]]
    gr.Markdown(
        "Which words go with which regions. Press **Compute interactions** once per pair; then "
        "**click a word** of the caption to see its region, or **click two opposite corners** on the "
        "image to see every word's score for that box. Nothing is recomputed for clicks."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            image = gr.Image(
                **accepted(
                    gr.Image,
                    label="Image",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    height=260,
                    elem_id=f"{IX}-image",
                )
            )
            text = gr.Textbox(
                label="Text",
                placeholder="e.g. an orange triangle and a yellow circle",
                lines=1,
                max_lines=3,
                elem_id=f"{IX}-text",
            )
            method = gr.Dropdown(
                **accepted(
                    gr.Dropdown,
                    choices=[(cls.title, n) for n, cls in methods.items()],
                    value=next(iter(methods)),
                    label="Interaction method",
                    elem_id=f"{IX}-method",
                    interactive=True,
                )
            )
            groups, controls = settings_accordion(gr, methods, specs, IX)
            run = gr.Button("Compute interactions", variant="primary", elem_id=f"{IX}-run")
            status = gr.Markdown("", elem_id=f"{IX}-status")
            gr.Examples(
                examples=[[p, c] for p, c in scenes],
                inputs=[image, text],
                label="Example scenes, captioned with both objects (click one)",
                **accepted(gr.Examples, elem_id=f"{IX}-examples"),
            )
        with gr.Column(scale=6, min_width=420):
            picture = gr.Image(
                **accepted(
                    gr.Image,
                    label="Region of the selected words · click two corners for a box",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=384,
                    elem_id=f"{IX}-picture",
                )
            )
            note = gr.Markdown("", elem_id=f"{IX}-note")
            caption = gr.HighlightedText(
                **accepted(
                    gr.HighlightedText,
                    value=[],
                    label="Caption: click a word",
                    combine_adjacent=False,
                    show_legend=False,
                    show_inline_category=False,
                    color_map={SELECTED: "#d92121"},
                    interactive=False,
                    elem_id=f"{IX}-caption",
                )
            )
            with gr.Row():
                extend = gr.Checkbox(
                    label="Build a phrase: a click adds or removes the word",
                    value=False,
                    elem_id=f"{IX}-extend",
                    min_width=200,
                )
                phrase = gr.Textbox(
                    label="Or type a phrase of the caption (Enter)",
                    lines=1,
                    max_lines=1,
                    elem_id=f"{IX}-phrase",
                    min_width=200,
                )
            gr.Markdown("**The words' scores for the box**")
            scores = gr.HTML(
                **accepted(
                    gr.HTML,
                    value=signed_tokens_html([], [], "Compute the interactions first."),
                    show_label=False,
                    elem_id=f"{IX}-scores",
                    min_height=60,
                )
            )
            files = gr.File(
                label="Downloads: figure (PNG), matrix (.npz), tokens and settings (.json)",
                file_count="multiple",
                interactive=False,
                elem_id=f"{IX}-files",
            )
    held = gr.State(None)  # the Interaction of this session's pair
    view = gr.State(View())
    shown = [picture, caption, scores, note]
    private = accepted(gr.on, api_visibility="private", show_progress="hidden")

    method.change(
        lambda chosen: [gr.update(visible=chosen == n) for n in methods],
        inputs=method,
        outputs=groups,
        queue=False,
        **accepted(method.change, api_visibility="private"),
    )
    compute = _compute_callback(gr, backend, keys, runs, limits, errors)
    gr.on(
        [run.click, text.submit],
        compute,
        inputs=[image, text, method, *controls],
        outputs=[held, view, *shown, files, status],
        **accepted(gr.on, api_name="interact", show_progress="full", concurrency_limit=1, concurrency_id="m2ib-model"),
    )

    def clicked_word(interaction, current, add, evt: gr.SelectData):
        return _shown(select_word, errors, interaction, current, evt.index, bool(add))

    def clicked_image(interaction, current, evt: gr.SelectData):
        x, y = evt.index
        return _shown(click_image, errors, interaction, current, x, y)

    def typed_phrase(interaction, current, words):
        return _shown(select_phrase, errors, interaction, current, words)

    for handler in (clicked_word, clicked_image):  # Gradio finds the event data by the annotation's class
        handler.__annotations__["evt"] = gr.SelectData
    gr.on([caption.select], clicked_word, inputs=[held, view, extend], outputs=[view, *shown], **private)
    gr.on([picture.select], clicked_image, inputs=[held, view], outputs=[view, *shown], **private)
    gr.on([phrase.submit], typed_phrase, inputs=[held, view, phrase], outputs=[view, *shown], **private)
    return {"keys": keys, "groups": {name: f"{IX}-settings-{name}" for name in methods}}


def _shown(action, errors, interaction, current, *args) -> list:
    """Run one click's plain function; the outputs [view, picture, caption, scores, note]."""
    if interaction is None:
        raise errors("compute the interactions first (the button under the text)")
    try:
        result = action(interaction, current or View(), *args)
    except M2IBError as exc:
        raise errors(str(exc)) from None
    return [result.view, result.picture, result.caption, result.scores, result.note]


def _compute_callback(gr, backend: Any, keys: list[tuple[str, str]], runs: Path, limits: dict[str, float], errors):
    """The button's callback: page values -> :func:`compute_interaction`, one model job at a time."""
    lock = threading.Lock()
    cache = InteractionCache()
    tracker = gr.Progress()

    def compute(image_path, text_value, method_name, *values, progress=tracker):
        settings = {name: value for (owner, name), value in zip(keys, values) if owner == method_name}
        prune(runs, KEEP_OUTPUTS_S)
        started = time.perf_counter()
        with reported(errors, "interactions"), lock:
            result, first, files, status = compute_interaction(
                backend,
                image_path,
                text_value,
                method_name,
                settings,
                cache=cache,
                workdir=tempfile.mkdtemp(dir=runs),
                progress=progress,
                **limits,
            )
        log.info(
            "interactions of %r on %s with %s in %.1f s",
            text_value.strip(),
            Path(image_path).name,
            method_name,
            time.perf_counter() - started,
        )
        return [result, first.view, first.picture, first.caption, first.scores, first.note, files, status]

    return name_api_parameters(compute, keys, tracker)
