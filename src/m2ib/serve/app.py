"""The page: :func:`build_app` lays out the components and wires them to the plain functions of
:mod:`m2ib.serve.callbacks`; :func:`launch` serves it."""

from __future__ import annotations

import html
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InputError, M2IBError
from .answer_tab import answer_tab
from .callbacks import COMPARE_ALL, explain_pair, registered_methods
from .controls import name_api_parameters, one_line, reported, setting_specs, settings_accordion
from .environment import accepted, import_gradio
from .interaction_tab import interaction_tab
from .limits import KEEP_OUTPUTS_S, MAX_MEGAPIXELS, MAX_UPLOAD_MB, prune
from .render import ELEM, tokens_html
from .scenes import example_scenes

log = logging.getLogger("m2ib.serve")

CSS = """
.gradio-container { max-width: 1280px !important; margin: 0 auto !important; }
#m2ib-title h1 { margin-bottom: 0; }
#m2ib-image img, #m2ib-heatmap img, #m2ib-answer-heatmap img { width: 100% !important; height: 100% !important; object-fit: contain; }
#m2ib-heatmap-note, #m2ib-tokens .m2ib-legend { font-size: 0.8em; opacity: 0.8; }
#m2ib-heatmap img, #m2ib-answer-heatmap img, #m2ib-answer-words img { image-rendering: pixelated; }
#m2ib-status { min-height: 1.5em; }
#m2ib-footer { font-size: 0.8em; opacity: 0.75; }
"""


class _InputWidgets(NamedTuple):
    """The input column's Gradio components: what a run reads, the run button and its status line."""

    image: Any
    text: Any
    method: Any
    groups: list  # one settings group per method, shown when that method is chosen
    controls: list  # every method's setting controls, in the order of the setting keys
    run: Any
    status: Any


def build_app(
    model: Any = None,
    device: str | None = None,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_megapixels: float = MAX_MEGAPIXELS,
    workdir: str | os.PathLike | None = None,
    settings: Any = None,
) -> Any:
    """The viewer page (``m2ib serve``), a ``gr.Blocks`` (not launched; see :func:`launch`).

    On a CLIP-style model two tabs: "Explain" (one method, or every method compared, with each method's
    settings as controls) and "Word-region interactions". On a generative VLM (a ``save_pretrained``
    folder that :func:`m2ib.generative.loading.is_generative` recognises, or its backend) one tab,
    "Answer" (:mod:`m2ib.serve.answer_tab`): an answer explained by an answer method. Needs Gradio
    (``pip install 'm2ib[viewer]'``).

    Args:
        model: anything ``m2ib.load`` takes (default ``None``: the shipped ``shapes`` model), or a backend;
            or a generative VLM's folder or :class:`~m2ib.generative.base.GenerativeBackend`.
        device: ``cpu``, ``cuda``, ...; default ``None``: where the model loads.
        max_upload_mb: uploads over this size are refused with a message; default
            :data:`~m2ib.serve.limits.MAX_UPLOAD_MB` (20).
        max_megapixels: images over this many pixels are refused with a message; default
            :data:`~m2ib.serve.limits.MAX_MEGAPIXELS` (40).
        workdir: where example scenes and downloads are written (default: a temporary folder,
            removed when the process exits); output files older than an hour are deleted.
        settings: a settings file or mapping replacing the model's recommended values (``m2ib.load``'s;
            refused for a generative model).

    Returns:
        The ``gr.Blocks`` page, queued (one explanation at a time); ``demo.m2ib_backend`` is
        the loaded model, ``demo.m2ib_generative`` whether it is a generative VLM.

    Examples:
        >>> from m2ib.serve.app import build_app, launch
        >>> demo = build_app("shapes")  # doctest: +SKIP
        >>> demo.m2ib_backend.name  # doctest: +SKIP
        'shapes'
        >>> url = launch(demo, port=7860, block=False)  # doctest: +SKIP
        >>> url  # doctest: +SKIP
        'http://127.0.0.1:7860/'
        >>> demo.close()  # doctest: +SKIP

        Skipped here: importing Gradio takes about 15 s.
    """
    gr = import_gradio()
    from ..generative.loading import is_generative

    generative = is_generative(model)
    backend = _load(model, device, settings, generative)
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="m2ib-serve-")
        _remove_at_exit(workdir)
    workdir = Path(workdir)
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    limits = {"max_bytes": max_upload_mb * 1e6, "max_pixels": max_megapixels * 1e6}
    name = model if generative and isinstance(model, str) else _model_name(backend)  # "shapes-vqa", not its folder

    blocks_kw = {"title": "m2ib viewer", "analytics_enabled": False, "delete_cache": (KEEP_OUTPUTS_S, KEEP_OUTPUTS_S)}
    with gr.Blocks(**accepted(gr.Blocks.__init__, **blocks_kw)) as demo:
        gr.Markdown(_heading(name, generative), elem_id=f"{ELEM}-title")
        with gr.Tabs(elem_id=f"{ELEM}-tabs"):
            if generative:
                with gr.Tab("Answer", id="answer", elem_id=f"{ELEM}-tab-answer"):
                    tab = answer_tab(
                        gr,
                        backend,
                        workdir / "runs",
                        limits,
                        [p for p, _ in example_scenes(workdir)],
                        lambda message: _page_error(gr, message),
                    )
                wired = {"m2ib_answer_keys": tab["keys"], "m2ib_answer_groups": tab["groups"]}
            else:
                wired = _clip_tabs(gr, backend, workdir, limits)
        gr.Markdown(
            f"Model **{html.escape(name)}** on {getattr(backend, 'device', 'cpu')} · runs on this "
            "machine: no analytics, no hub access, one explanation at a time · M2IB: [Wang, Rudner and "
            "Wilson, NeurIPS 2023](https://arxiv.org/abs/2312.17174)",
            elem_id=f"{ELEM}-footer",
        )
    demo.queue(default_concurrency_limit=1)
    demo.m2ib_backend = backend  # for callers and tests: the loaded model
    demo.m2ib_generative = generative
    for attribute, value in wired.items():
        setattr(demo, attribute, value)
    return demo


def _load(model: Any, device: str | None, settings: Any, generative: bool) -> Any:
    """The backend: a generative VLM's (:func:`m2ib.generative.loading.load_generative`), else ``m2ib.load``'s."""
    from ..api import load
    from ..models import DEFAULT_MODEL

    if not generative:
        return load(DEFAULT_MODEL if model is None else model, device=device, settings=settings)
    if settings is not None:
        raise InputError(
            "a settings file holds a CLIP-style model's recommended values: drop it for a generative model"
        )
    from ..generative.base import GenerativeBackend
    from ..generative.loading import load_generative

    return model if isinstance(model, GenerativeBackend) else load_generative(str(model), device=device)


def _model_name(backend: Any) -> str:
    config = getattr(getattr(backend, "model", None), "config", None)  # a generative backend: its folder
    return str(getattr(backend, "name", None) or getattr(config, "_name_or_path", "") or type(backend).__name__)


def _heading(name: str, generative: bool) -> str:
    if generative:
        return (
            f"# m2ib viewer\nWhich image regions **{html.escape(name)}**, a generative vision-language model, "
            "needs to give an answer. Upload an image (or click an example scene), type a prompt and an answer "
            "(or none: the model's own), press **Explain the answer**. The Explain and Word-region interactions "
            "tabs explain CLIP-style models: start the viewer on one (`m2ib serve --model NAME`) to use them."
        )
    return (
        f"# m2ib viewer\nWhich image regions and which words make **{html.escape(name)}** match an "
        f"image with a text. Upload an image (or click an example scene), type a text, press **Explain**."
    )


def _clip_tabs(gr, backend: Any, workdir: Path, limits: dict[str, float]) -> dict[str, Any]:
    """The "Explain" and "Word-region interactions" tabs (a CLIP-style model), wired; the page's attributes."""
    methods = registered_methods()
    if not methods:
        raise M2IBError("no attribution method is registered")
    specs = {name: setting_specs(backend, name) for name in methods}
    keys = [(s.method, s.name) for name in methods for s in specs[name]]
    with gr.Tab("Explain", id="explain", elem_id=f"{ELEM}-tab-explain"), gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            inputs = _input_column(gr, methods, specs, example_scenes(workdir))
        with gr.Column(scale=6, min_width=420):
            outputs = _output_column(gr, backend)
    with gr.Tab("Word-region interactions", id="interactions", elem_id=f"{ELEM}-tab-interactions"):
        tab = interaction_tab(
            gr,
            backend,
            workdir / "runs",
            limits,
            example_scenes(workdir, both=True),
            lambda message: _page_error(gr, message),
        )

    def show_settings(selected):
        return [gr.update(visible=selected in (name, COMPARE_ALL)) for name in methods]

    inputs.method.change(
        show_settings,
        inputs=inputs.method,
        outputs=inputs.groups,
        queue=False,
        **accepted(inputs.method.change, api_visibility="private"),
    )
    gr.on(
        [inputs.run.click, inputs.text.submit],
        _explain_callback(gr, backend, keys, workdir / "runs", limits),
        inputs=[inputs.image, inputs.text, inputs.method, *inputs.controls],
        outputs=[*outputs, inputs.status],
        **accepted(gr.on, api_name="explain", show_progress="full", concurrency_limit=1, concurrency_id="m2ib-model"),
    )
    return {
        "m2ib_setting_keys": keys,
        "m2ib_setting_groups": {name: f"{ELEM}-settings-{name}" for name in methods},
        "m2ib_interaction_keys": tab["keys"],
        "m2ib_interaction_groups": tab["groups"],
    }


def _input_column(gr, methods: dict[str, Any], specs: dict[str, list], scenes: list[tuple[str, str]]) -> _InputWidgets:
    image = _raw_image_component(gr)(
        **accepted(
            gr.Image,
            label="Image",
            type="filepath",
            sources=["upload", "clipboard"],
            height=300,
            elem_id=f"{ELEM}-image",
        )
    )
    text = gr.Textbox(label="Text", placeholder="e.g. a yellow star", lines=1, max_lines=3, elem_id=f"{ELEM}-text")
    choices = [(cls.title, name) for name, cls in methods.items()]
    choices.append(("Compare all methods", COMPARE_ALL))
    method = gr.Dropdown(
        **accepted(
            gr.Dropdown,
            choices=choices,
            value=next(iter(methods)),
            label="Method",
            info='"Compare all methods" runs each in turn: a row each (minutes on a CPU)',
            elem_id=f"{ELEM}-method",
            interactive=True,
        )
    )
    groups, controls = settings_accordion(gr, methods, specs, ELEM)
    run = gr.Button("Explain", variant="primary", elem_id=f"{ELEM}-run")
    status = gr.Markdown("", label="Status", elem_id=f"{ELEM}-status")
    gr.Examples(
        examples=[[p, c] for p, c in scenes],
        inputs=[image, text],
        label="Example scenes (click one)",
        **accepted(gr.Examples, elem_id=f"{ELEM}-examples"),
    )
    return _InputWidgets(image, text, method, groups, controls, run, status)


def _output_column(gr, backend: Any) -> list:
    """heatmap, tokens, similarity, figure, files (the first five of ``PairOutputs``)."""
    size = "x".join(str(v) for v in backend.geometry.image_size)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=240):
            heatmap = gr.Image(
                **accepted(
                    gr.Image,
                    label="Image attribution",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=300,
                    elem_id=f"{ELEM}-heatmap",
                )
            )
            gr.Markdown(
                f"The image as the model saw it ({size} px: resized, centre-cropped) with the map over it; "
                "red is high.",
                elem_id=f"{ELEM}-heatmap-note",
            )
        with gr.Column(scale=5, min_width=240):
            gr.Markdown("**Text attribution**")
            tokens = gr.HTML(
                **accepted(
                    gr.HTML,
                    value=tokens_html([], []),
                    label="Text attribution",
                    show_label=False,
                    elem_id=f"{ELEM}-tokens",
                    min_height=60,
                )
            )
            similarity = gr.Textbox(
                label="Image-text similarity (cosine)", interactive=False, elem_id=f"{ELEM}-similarity"
            )
    figure = gr.Image(
        **accepted(gr.Image, label="Figure", type="filepath", format="png", interactive=False, elem_id=f"{ELEM}-figure")
    )
    files = gr.File(
        label="Downloads: figure (PNG), maps (.npz), settings and scores (.json)",
        file_count="multiple",
        interactive=False,
        elem_id=f"{ELEM}-files",
    )
    return [heatmap, tokens, similarity, figure, files]


def _explain_callback(gr, backend: Any, keys: list[tuple[str, str]], runs: Path, limits: dict[str, float]):
    """The button's callback: page values -> :func:`explain_pair`, one request at a time."""
    lock = threading.Lock()  # one explanation at a time on this model, whatever the queue does
    tracker = gr.Progress()

    def explain_clicked(
        image_path: Any, text_value: Any, method_name: str, *values: Any, progress: Any = tracker
    ) -> list[Any]:
        by_method: dict[str, dict[str, Any]] = {}
        for (owner, field_name), value in zip(keys, values):
            by_method.setdefault(owner, {})[field_name] = value
        settings = by_method if method_name == COMPARE_ALL else by_method.get(method_name, {})
        prune(runs, KEEP_OUTPUTS_S)
        started = time.perf_counter()
        with reported(lambda message: _page_error(gr, message), "explanation"), lock:
            result = explain_pair(
                backend,
                image_path,
                text_value,
                method_name,
                settings,
                workdir=tempfile.mkdtemp(dir=runs),
                progress=progress,
                **limits,
            )
        log.info(
            "explained %r on %s with %s in %.1f s",
            text_value.strip(),
            Path(image_path).name,
            method_name,
            time.perf_counter() - started,
        )
        return list(result)

    return name_api_parameters(explain_clicked, keys, tracker)


def _theme(gr):
    try:
        return gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
    except Exception:  # noqa: BLE001 - any theme problem: Gradio's default
        return None


def _raw_image_component(gr):
    """``gr.Image`` that hands the uploaded file's path over unread (the default would decode it
    with PIL first, so a corrupt or huge upload failed before m2ib could say why)."""

    class UploadedImage(gr.Image):
        is_template = True  # same front end as gr.Image

        def preprocess(self, payload):
            if payload is None:
                return None
            path = getattr(payload, "path", None)
            if path:
                return str(path)
            try:  # a pasted image arrives inline
                return super().preprocess(payload)
            except Exception as exc:  # noqa: BLE001
                log.warning("rejected: cannot read a pasted image: %s", one_line(exc))
                raise _page_error(gr, "cannot read the pasted image; upload the file instead") from None

    return UploadedImage


def _page_error(gr, message: str):
    """``gr.Error`` shown in the page without a traceback in the server log."""
    kwargs = accepted(gr.Error.__init__, duration=None, print_exception=False, title="Cannot explain this")
    try:
        return gr.Error(message, **kwargs)
    except TypeError:
        return gr.Error(message)


def _remove_at_exit(folder: str | os.PathLike) -> None:
    import atexit

    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def launch(
    demo: Any,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    share: bool = False,
    block: bool = True,
    max_upload_mb: float = MAX_UPLOAD_MB,
) -> str:
    """Start the server and return its address; ``block=True`` then serves until Ctrl+C,
    ``block=False`` returns at once (stop it with ``demo.close()``).

    Args:
        demo: the page, from :func:`build_app`.
        host: the address to bind; default ``"127.0.0.1"`` (this machine only).
        port: the port; default ``7860``.
        share: ask Gradio for a public share link; default ``False``.
        block: serve until Ctrl+C; default ``True``.
        max_upload_mb: the server's hard cap on a request is five times this; default
            :data:`~m2ib.serve.limits.MAX_UPLOAD_MB` (20).

    Returns:
        The local address (``http://127.0.0.1:7860/``).

    Examples:
        See :func:`build_app`.
    """
    gr = import_gradio()
    kwargs: dict[str, Any] = {
        "server_name": host,
        "server_port": port,
        "share": share,
        "prevent_thread_lock": True,
        "inbrowser": False,
        "quiet": True,
        "show_error": False,
        "css": CSS,
        "theme": _theme(gr),
        "max_file_size": f"{int(5 * max_upload_mb)}mb",  # a hard cap; the page refuses uploads over 1x
    }
    _, local_url, share_url = demo.launch(**accepted(demo.launch, **kwargs))
    log.info("serving on %s (Ctrl+C to stop)%s", local_url, f"; public link: {share_url}" if share_url else "")
    if block:
        demo.block_thread()
    return local_url
