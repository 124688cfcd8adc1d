"""The "Answer" tab (a generative model's page): its components, wired to
:func:`m2ib.serve.answer.explain_answer_page`."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .answer import answer_specs, example_prompt, explain_answer_page, registered_answer_methods
from .controls import name_api_parameters, reported, settings_accordion
from .environment import accepted
from .limits import KEEP_OUTPUTS_S, prune
from .render import ELEM

log = logging.getLogger("m2ib.serve")
AN = f"{ELEM}-answer"  # prefix of this tab's elem_ids


def answer_tab(
    gr, backend: Any, runs: Path, limits: dict[str, float], scenes: list[str], errors: Any
) -> dict[str, Any]:
    """Lay out the tab (inside an open ``gr.Tab``) and wire it; returns its setting keys and groups.

    ``errors(message)`` makes the page's error; ``scenes`` are example image paths."""
    methods = registered_answer_methods()
    specs = {name: answer_specs(name) for name in methods}
    keys = [(f"answer-{name}", s.name) for name in methods for s in specs[name]]
    prompt_value = example_prompt(backend)
    gr.Markdown(
        "Which image regions the model needs to give an answer. Type a prompt in the model's form "
        f"(with `{backend.image_token}` where the image goes) and an answer, or leave the answer empty to "
        "explain the model's own. M2IB also maps each answer word and scores the prompt's words."
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
                    elem_id=f"{AN}-image",
                )
            )
            prompt = gr.Textbox(label="Prompt", value=prompt_value, lines=2, max_lines=6, elem_id=f"{AN}-prompt")
            answer = gr.Textbox(
                label="Answer (empty: the model's own answer, generated and explained)",
                placeholder="e.g. a red circle",
                lines=1,
                max_lines=3,
                elem_id=f"{AN}-answer",
            )
            longest = gr.Number(
                **accepted(
                    gr.Number,
                    value=32,
                    precision=0,
                    label="Longest generated answer (tokens; with an empty answer)",
                    elem_id=f"{AN}-max-new-tokens",
                    minimum=1,
                )
            )
            method = gr.Dropdown(
                **accepted(
                    gr.Dropdown,
                    choices=[(cls.title, n) for n, cls in methods.items()],
                    value=next(iter(methods)),
                    label="Answer method",
                    elem_id=f"{AN}-method",
                    interactive=True,
                )
            )
            groups, controls = settings_accordion(gr, methods, specs, AN)
            run = gr.Button("Explain the answer", variant="primary", elem_id=f"{AN}-run")
            status = gr.Markdown("", elem_id=f"{AN}-status")
            gr.Examples(
                examples=[[p, prompt_value] for p in scenes],
                inputs=[image, prompt],
                label="Example scenes (click one)",
                **accepted(gr.Examples, elem_id=f"{AN}-examples"),
            )
        with gr.Column(scale=6, min_width=420):
            shown = gr.Markdown("The answer explained appears here.", elem_id=f"{AN}-explained")
            heatmap = gr.Image(
                **accepted(
                    gr.Image,
                    label="Image map of the whole answer (red: needed most)",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=336,
                    elem_id=f"{AN}-heatmap",
                )
            )
            words = gr.Gallery(
                **accepted(
                    gr.Gallery,
                    label="A map per answer word (M2IB, per_word)",
                    columns=4,
                    rows=1,
                    height=240,
                    object_fit="contain",
                    allow_preview=True,
                    elem_id=f"{AN}-words",
                )
            )
            gr.Markdown("**Prompt words the answer needs** (M2IB, prompt_side)")
            prompt_words = gr.HTML(
                **accepted(gr.HTML, value="", show_label=False, elem_id=f"{AN}-prompt-words", min_height=40)
            )
            figure = gr.Image(
                **accepted(
                    gr.Image, label="Figure", type="filepath", format="png", interactive=False, elem_id=f"{AN}-figure"
                )
            )
            files = gr.File(
                label="Downloads: figure (PNG), maps (.npz), settings and scores (.json)",
                file_count="multiple",
                interactive=False,
                elem_id=f"{AN}-files",
            )
    method.change(
        lambda chosen: [gr.update(visible=chosen == n) for n in methods],
        inputs=method,
        outputs=groups,
        queue=False,
        **accepted(method.change, api_visibility="private"),
    )
    gr.on(
        [run.click, prompt.submit, answer.submit],
        _callback(gr, backend, keys, runs, limits, errors),
        inputs=[image, prompt, answer, longest, method, *controls],
        outputs=[shown, heatmap, words, prompt_words, figure, files, status],
        **accepted(gr.on, api_name="answer", show_progress="full", concurrency_limit=1, concurrency_id="m2ib-model"),
    )
    return {"keys": keys, "groups": {name: f"{AN}-settings-{name}" for name in methods}}


def _callback(gr, backend: Any, keys: list[tuple[str, str]], runs: Path, limits: dict[str, float], errors):
    """The button's callback: page values -> :func:`explain_answer_page`, one model job at a time."""
    lock = threading.Lock()
    tracker = gr.Progress()

    def explain_clicked(image_path, prompt, answer, longest, method_name, *values, progress=tracker):
        owner = f"answer-{method_name}"
        settings = {name: value for (o, name), value in zip(keys, values) if o == owner}
        prune(runs, KEEP_OUTPUTS_S)
        started = time.perf_counter()
        with reported(errors, "explanation"), lock:
            out = explain_answer_page(
                backend,
                image_path,
                prompt,
                answer,
                method_name,
                settings,
                max_new_tokens=longest,
                workdir=tempfile.mkdtemp(dir=runs),
                progress=progress,
                **limits,
            )
        log.info(
            "explained the answer %r with %s in %.1f s",
            out.explanation.answer,
            method_name,
            time.perf_counter() - started,
        )
        return list(out[:7])

    return name_api_parameters(
        explain_clicked, keys, tracker, leading=("image", "prompt", "answer", "max_new_tokens", "method")
    )
