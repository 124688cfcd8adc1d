"""``m2ib serve``: a local web page that explains image-text pairs (Gradio; ``pip install "m2ib[viewer]"``).

The page is a thin layer over the API. The callbacks are plain module-level functions that
take explicit arguments (:func:`read_image`, :func:`explain_pair`, :func:`tokens_html`, ...),
so they are tested without a server; :func:`build_app` only lays out the components and wires
them to those functions. The method list and the settings controls are read from
``m2ib.methods.REGISTRY`` and the methods' ``Settings`` dataclasses when the page is built.

Offline and private by default: Gradio's analytics and the Hugging Face hub's network access
and telemetry are switched off (unless the variables are already set), the server binds
127.0.0.1, and no share link is created unless ``--share`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .errors import InputError, M2IBError

log = logging.getLogger("m2ib.serve")

# Set before gradio (and huggingface_hub) are imported, unless the user set them.
PRIVATE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # without it Gradio looks up outside hosts at start-up
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
INSTALL_HINT = 'pip install "m2ib[viewer]"'
COMPARE_ALL = "compare all"
MAX_UPLOAD_MB = 20.0  # default upload limit, in MB (10^6 bytes)
MAX_MEGAPIXELS = 40.0  # default pixel limit: larger images are refused before they are decoded
MAX_TEXT_CHARS = 10_000  # longer texts are refused (the models read 77 tokens or fewer)
KEEP_OUTPUTS_S = 3600  # a request's output files are deleted after an hour
AUTO = "auto (model's recommended)"
ELEM = "m2ib"  # prefix of every elem_id

_HUE = (217, 33, 33)  # token shading: white -> red, as in the figures (m2ib.viz.figure)
_MAX_ALPHA = 0.78


# ----------------------------------------------------------------------------------------------
# Gradio import (optional extra, private environment first).
# ----------------------------------------------------------------------------------------------
def private_environment(environ: typing.MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the privacy variables that the user did not set; returns those it set."""
    added = {}
    for key, value in PRIVATE_ENV.items():
        if key not in environ:
            environ[key] = value
            added[key] = value
    return added


def import_gradio():
    """``gradio``, imported after :func:`private_environment`; a missing extra says how to install it."""
    private_environment()
    try:
        import gradio
    except ImportError as exc:
        raise M2IBError(f"the web viewer needs Gradio ({exc.name or 'gradio'} is not installed): "
                        f"{INSTALL_HINT}") from None
    if _major(gradio) < 6:  # Gradio 5's page loads a script from a CDN (measured by the browser test)
        raise M2IBError(f"the web viewer needs Gradio 6 or newer (found {gradio.__version__}, whose page "
                        f"loads a script from another host): {INSTALL_HINT}")
    return gradio


def _major(gr) -> int:
    try:
        return int(gr.__version__.split(".")[0])
    except (AttributeError, ValueError):
        return 0


def _kw(factory: Callable, **kwargs: Any) -> dict[str, Any]:
    """Only the keyword arguments ``factory`` accepts (they differ between Gradio releases)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


# ----------------------------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------------------------
def read_image(image: Any, max_bytes: float = MAX_UPLOAD_MB * 1e6, max_pixels: float = MAX_MEGAPIXELS * 1e6):
    """An uploaded image as an RGB PIL image, or an :class:`InputError` that a person can act on.

    ``image`` is a file path (what the page uploads) or a PIL image. Files over ``max_bytes``
    and images over ``max_pixels`` (e.g. decompression bombs) are refused before decoding.
    """
    from PIL import Image

    from .inputs import load_image

    if image is None or (isinstance(image, str) and not image.strip()):
        raise InputError("no image: upload one, or click one of the example scenes")
    if isinstance(image, Image.Image):
        _check_pixels("the image", image.size, max_pixels)
        return load_image(image)[0]
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"cannot use {type(image).__name__} as an image: upload an image file")
    path = Path(image)
    name = path.name
    if not path.is_file():
        raise InputError(f"{name}: the uploaded file is missing; upload it again")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"{name}: the file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")
    if size == 0:
        raise InputError(f"{name}: the file is empty; upload a PNG, JPEG or another common image format")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:  # reads the header only
                dims = opened.size
    except Image.DecompressionBombError:
        raise InputError(f"{name}: the image has too many pixels (a decompression bomb?); "
                         f"the limit is {max_pixels / 1e6:g} megapixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        log.debug("cannot identify %s: %s", path, exc)
        raise InputError(f"{name}: cannot read this file as an image; "
                         "upload a PNG, JPEG or another common image format") from None
    _check_pixels(name, dims, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return load_image(path)[0]
    except InputError as exc:
        log.debug("cannot decode %s: %s", path, exc)
        raise InputError(f"{name}: the image is damaged or incomplete and cannot be decoded; "
                         "upload another file") from None


def _check_pixels(name: str, size: tuple[int, int], max_pixels: float) -> None:
    w, h = size
    if w * h > max_pixels:
        raise InputError(f"{name}: the image is {w} x {h} pixels ({w * h / 1e6:.1f} megapixels); "
                         f"the limit is {max_pixels / 1e6:g} megapixels")
    if w <= 0 or h <= 0:
        raise InputError(f"{name}: the image has no pixels ({w} x {h})")


def check_text(text: Any, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty text: type the words to explain, e.g. \"a yellow star\"")
    if len(text) > max_chars:
        raise InputError(f"the text has {len(text)} characters; the limit is {max_chars} (CLIP-style models "
                         "read a few dozen words)")
    return text.strip()


# ----------------------------------------------------------------------------------------------
# Settings: one control per field of a method's Settings dataclass.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SettingSpec:
    """What the page shows for one setting of one method."""

    method: str
    name: str
    kind: type  # int, float, bool or str
    value: Any  # shown initially; None for "auto"
    help: str
    choices: tuple | None = None
    auto: str | None = None  # placeholder for an empty (auto) value, e.g. "auto (model's recommended: 9)"

    @property
    def elem_id(self) -> str:
        return f"{ELEM}-setting-{self.method}-{self.name}".replace("_", "-")


def setting_specs(backend: Any, method: str) -> list[SettingSpec]:
    """The controls of ``method``'s settings, with the defaults this model would use."""
    from .methods import REGISTRY

    cls = REGISTRY[method]
    algorithm = cls()
    hints = typing.get_type_hints(cls.Settings)
    try:
        effective = algorithm.make_settings(backend)  # defaults, then the model's recommended values
    except Exception:  # noqa: BLE001 - a method whose recommended values do not validate still gets its defaults
        effective = cls.Settings()
    try:
        resolved = algorithm.resolved(backend, effective)
    except Exception:  # noqa: BLE001 - only used for the "auto" hints
        resolved = effective
    specs = []
    for f in dataclasses.fields(cls.Settings):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if args:  # Optional[X] / X | None
            kind = args[0]
        if kind not in (int, float, bool, str):
            kind = str
        help_text = f.metadata.get("help", "")
        value = None if f.default is None else getattr(effective, f.name)
        auto = None
        if f.default is None:
            shown = getattr(resolved, f.name, None)
            auto = AUTO if shown is None else f"auto (model's recommended: {shown})"
        elif value != f.default:
            help_text = f"{help_text} (model's recommended; the method's default is {f.default})"
        choices = f.metadata.get("choices")
        specs.append(SettingSpec(method, f.name, kind, value, help_text, tuple(choices) if choices else None, auto))
    return specs


def clean_settings(method: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Page values -> keyword arguments for ``m2ib.explain``.

    ``None`` and empty text mean auto (the model's recommended value); numbers typed as text
    are parsed; whole floats become ints for integer settings. Names are checked by the method.
    """
    from .methods import REGISTRY

    hints = typing.get_type_hints(REGISTRY[method].Settings)
    out = {}
    for name, value in (settings or {}).items():
        allowed = [a for a in typing.get_args(hints.get(name)) if a is not type(None)] or [hints.get(name)]
        if value is None:
            continue
        if isinstance(value, str) and str not in allowed and name in hints:
            text = value.strip()
            if not text or text.lower().startswith("auto"):
                continue
            try:
                value = int(text) if int in allowed else float(text)
            except ValueError:
                what = "a whole number" if int in allowed else "a number"
                raise InputError(f"{name}={text!r}: give {what}, or leave it empty for auto") from None
        if int in allowed and float not in allowed and isinstance(value, float):
            if not value.is_integer():
                raise InputError(f"{name}={value:g} must be a whole number")
            value = int(value)
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------
# Outputs.
# ----------------------------------------------------------------------------------------------
class PairOutputs(NamedTuple):
    """What one press of the button shows, in the order of the page's output components."""

    heatmap: Any  # PIL image: the heatmap over the image as the model saw it (None: not explained)
    tokens: str  # HTML: the tokens shaded by their scores
    similarity: str  # cosine similarity of the image and text embeddings, formatted
    figure: str | None  # path of the figure PNG (explanation figure, or the comparison grid)
    files: list[str]  # downloads: figure (PNG), maps (.npz), settings and scores (.json)
    status: str  # Markdown: what was done, and any method that failed


def heatmap_image(exp: Any):
    """The image as the model saw it with the image map over it (PIL, the model's input size)."""
    from .viz.overlay import overlay, to_pil

    if exp.image_map is None:
        return None
    return to_pil(overlay(exp.image, exp.image_map))


def tokens_html(tokens: Sequence[str], scores: Sequence[float] | None, special: Sequence[int] = ()) -> str:
    """Tokens as HTML chips shaded white -> red by score (as in the figures); start/end tokens in grey."""
    special = {int(i) % max(1, len(tokens)) for i in special}
    note = ('<div id="{0}-tokens-list" class="{0}-tokens {0}-none" style="opacity:0.7;font-style:italic;'
            'padding:8px 2px">{1}</div>')
    if scores is None:
        return note.format(ELEM, "this method does not explain the text")
    if not tokens:
        return note.format(ELEM, "the text's tokens appear here, each shaded by its score")
    chips = []
    for i, token in enumerate(tokens):
        text = html.escape(str(token))
        if i in special:
            chips.append(f'<span class="{ELEM}-tok {ELEM}-special" data-index="{i}" style="display:inline-flex;'
                         'flex-direction:column;align-items:center;margin:3px 2px;padding:5px 3px;color:#888;'
                         f'font-style:italic;font-size:0.85em;vertical-align:top">{text}</span>')
            continue
        s = min(max(float(scores[i]), 0.0), 1.0) if scores[i] == scores[i] else 0.0
        a = _MAX_ALPHA * s
        r, g, b = (round(255 - (255 - c) * a) for c in _HUE)
        chips.append(
            f'<span class="{ELEM}-tok" data-index="{i}" data-score="{s:.4f}" title="score {s:.3f}" '
            f'style="display:inline-flex;flex-direction:column;align-items:center;margin:3px 2px;'
            f'padding:3px 7px 2px;border-radius:5px;border:1px solid #c8c8c8;background:rgb({r},{g},{b});'
            f'color:#1a1a1a;line-height:1.25">'
            f'<span class="{ELEM}-word" style="font-size:1.15em;color:#1a1a1a">{text}</span>'
            f'<span class="{ELEM}-score" style="font-size:0.72em;color:#444">{s:.2f}</span></span>')
    legend = (f'<div class="{ELEM}-legend" style="margin-top:6px;font-size:0.75em;color:#777">'
              'shading: score over the words (start/end tokens excluded), 0 white to 1 red</div>')
    return f'<div id="{ELEM}-tokens-list" class="{ELEM}-tokens" style="line-height:1.2">{"".join(chips)}</div>' + legend


def _stem(image: Any) -> str:
    name = Path(image).stem if isinstance(image, (str, os.PathLike)) else "image"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "image"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, M2IBError) else text


def _methods() -> dict[str, Any]:
    from .methods import REGISTRY

    return dict(REGISTRY)


def _modalities(cls: Any) -> tuple[str, ...]:
    return tuple(m for m in ("image", "text") if m in getattr(cls, "modalities", ("image", "text")))


def explain_pair(backend: Any, image: Any, text: Any, method: str, settings: Mapping[str, Any] | None = None,
                 *, workdir: str | os.PathLike | None = None, progress: Callable | None = None,
                 max_bytes: float = MAX_UPLOAD_MB * 1e6, max_pixels: float = MAX_MEGAPIXELS * 1e6) -> PairOutputs:
    """Explain one image-text pair for the page.

    Args:
        backend: a loaded model (``m2ib.load``).
        image: the uploaded file's path, or a PIL image.
        text: the text to explain.
        method: a name from the method registry, or ``"compare all"``.
        settings: the method's settings (``{"steps": 2, ...}``; ``None`` values mean auto); for
            ``"compare all"``, a mapping from method name to its settings.
        workdir: where the downloads are written (a new temporary folder if None).
        progress: ``progress(fraction, desc=...)``, e.g. a ``gr.Progress``.

    Raises:
        InputError: bad input; its message is shown in the page.
    """
    report = progress or (lambda *a, **k: None)
    started = time.perf_counter()
    pil = read_image(image, max_bytes, max_pixels)
    text = check_text(text)
    methods = _methods()
    if method != COMPARE_ALL and method not in methods:
        raise InputError(f"unknown method {method!r}: choose one of {', '.join([*methods, COMPARE_ALL])}")
    out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="m2ib-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(image)
    if method == COMPARE_ALL:
        return _compare(backend, pil, text, settings or {}, out, stem, report, started, methods, image)
    cls = methods[method]
    report(0.05, desc=f"explaining with {cls.title}")
    exp, notes = _explain_one(backend, pil, text, method, settings, image)
    report(0.85, desc="drawing the figure")
    paths = exp.save(out, f"{stem}_{method}", figure=True)
    seconds = time.perf_counter() - started
    status = f"{cls.title} · {getattr(backend, 'name', '')} · {seconds:.1f} s" + _warning_lines(notes)
    return PairOutputs(heatmap_image(exp), tokens_html(exp.tokens, _scores(exp), exp.special_tokens),
                       f"{exp.similarity:.3f}", str(paths["png"]), [str(paths[k]) for k in ("png", "npz", "json")],
                       status)


def _scores(exp: Any):
    shading = exp.word_shading()
    return None if shading is None else [float(v) for v in shading]


def _explain_one(backend: Any, pil: Any, text: str, method: str, settings: Mapping[str, Any] | None, image: Any):
    from .api import explain

    cls = _methods()[method]
    with warnings.catch_warnings(record=True) as caught:  # e.g. a text longer than the model reads
        warnings.simplefilter("always")
        exp = explain(backend, pil, text, method=method, modalities=_modalities(cls), progress=False,
                      **clean_settings(method, settings))
    exp.image_source = Path(image).name if isinstance(image, (str, os.PathLike)) else "<uploaded image>"
    return exp, [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, UserWarning)]


def _warning_lines(lines: Sequence[str]) -> str:
    return "".join(f"\n\n⚠ {html.escape(line)}" for line in dict.fromkeys(lines))


def _compare(backend, pil, text, settings, out: Path, stem: str, report, started, methods, image) -> PairOutputs:
    from .viz.figure import comparison_figure, save_png

    done, rows, failed, files, notes = [], [], [], [], []
    for k, (name, cls) in enumerate(methods.items()):
        report(0.05 + 0.8 * k / len(methods), desc=f"{cls.title} ({k + 1} of {len(methods)})")
        if isinstance(settings.get(name), Mapping):  # per method, as the page sends them
            own = settings[name]
        else:  # one flat mapping: each method takes the settings it has
            names = {f.name for f in dataclasses.fields(cls.Settings)}
            own = {key: value for key, value in settings.items() if key in names}
        try:
            exp, warned = _explain_one(backend, pil, text, name, own, image)
        except Exception as exc:  # noqa: BLE001 - one failing method is a row, not a failed page
            failed.append(f"{cls.title}: {_one_line(exc)}")
            log.warning("compare all: %s failed: %s", name, _one_line(exc))
            rows.append((f"{cls.title} (failed)", None, None))
            continue
        done.append(exp)
        notes += warned
        rows.append((cls.title, exp.image_map, exp.word_shading()))
        paths = exp.save(out, f"{stem}_{name}", figure=False)
        files += [str(paths["npz"]), str(paths["json"])]
    if not done:
        raise InputError("every method failed: " + "; ".join(failed))
    report(0.9, desc="drawing the comparison")
    first = done[0]
    figure = comparison_figure(first.image, rows, first.tokens, title=text, special_tokens=first.special_tokens)
    png = out / f"{stem}_compare.png"
    save_png(figure, png)
    seconds = time.perf_counter() - started
    status = (f"compared {len(done)} of {len(methods)} methods · {getattr(backend, 'name', '')} · {seconds:.1f} s; "
              f"the heatmap and the tokens above are {methods[first.method].title}'s")
    if failed:
        status += "\n\n" + "\n".join(f"- failed: {html.escape(line)}" for line in failed)
    status += _warning_lines(notes)
    return PairOutputs(heatmap_image(first), tokens_html(first.tokens, _scores(first), first.special_tokens),
                       f"{first.similarity:.3f}", str(png), [str(png), *files], status)


# ----------------------------------------------------------------------------------------------
# Example scenes.
# ----------------------------------------------------------------------------------------------
def example_scenes(workdir: str | os.PathLike) -> list[tuple[str, str]]:
    """(image path, caption) of the shipped example scenes, copied into ``workdir``.

    They come from ``examples/scenes.json`` in a source checkout (or the current folder);
    an installed package without it renders three scenes of the shapes world instead.
    """
    out = Path(workdir) / "examples"
    out.mkdir(parents=True, exist_ok=True)
    for folder in (Path(__file__).resolve().parents[2] / "examples", Path.cwd() / "examples"):
        index = folder / "scenes.json"
        if not index.is_file():
            continue
        try:
            entries = json.loads(index.read_text())
            scenes = []
            for entry in entries:
                source = folder / Path(entry["image"]).name
                if source.is_file():
                    target = out / source.name
                    shutil.copyfile(source, target)
                    scenes.append((str(target), str(entry["caption"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the example scenes in %s: %s", folder, exc)
            continue
        if scenes:
            return scenes
    from .datasets.shapes import phrase, render_scene, split_seed

    scenes = []
    for i in range(3):
        scene = render_scene(split_seed("test", i), size=96, n_objects=(2, 2))
        target = out / f"scene{i + 1}.png"
        scene.to_pil().save(target)
        scenes.append((str(target), phrase(*scene.pairs[0])))
    return scenes


# ----------------------------------------------------------------------------------------------
# The page.
# ----------------------------------------------------------------------------------------------
CSS = """
.gradio-container { max-width: 1280px !important; margin: 0 auto !important; }
#m2ib-title h1 { margin-bottom: 0; }
#m2ib-image img, #m2ib-heatmap img { width: 100% !important; height: 100% !important; object-fit: contain; }
#m2ib-heatmap-note, #m2ib-tokens .m2ib-legend { font-size: 0.8em; opacity: 0.8; }
#m2ib-heatmap img { image-rendering: pixelated; }
#m2ib-status { min-height: 1.5em; }
#m2ib-footer { font-size: 0.8em; opacity: 0.75; }
"""


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
                log.warning("rejected: cannot read a pasted image: %s", _one_line(exc))
                raise _page_error(gr, "cannot read the pasted image; upload the file instead") from None

    return UploadedImage


def _setting_control(gr, spec: SettingSpec):
    label = spec.name
    common = {"label": label, "info": spec.help, "elem_id": spec.elem_id, "interactive": True, "min_width": 180}
    if spec.choices:
        return gr.Dropdown(**_kw(gr.Dropdown, choices=list(spec.choices), value=spec.value, **common))
    if spec.kind is bool:
        return gr.Checkbox(**_kw(gr.Checkbox, value=bool(spec.value), **common))
    if spec.auto is not None:  # empty means auto (a Number would show and send 0)
        return gr.Textbox(**_kw(gr.Textbox, value="", placeholder=spec.auto, **common))
    if spec.kind in (int, float):
        return gr.Number(**_kw(gr.Number, value=spec.value, precision=0 if spec.kind is int else None,
                               placeholder=spec.auto, **common))
    return gr.Textbox(**_kw(gr.Textbox, value=spec.value, placeholder=spec.auto, **common))


def build_app(model: Any = None, device: str | None = None, *, max_upload_mb: float = MAX_UPLOAD_MB,
              max_megapixels: float = MAX_MEGAPIXELS, workdir: str | os.PathLike | None = None):
    """The viewer page, a ``gr.Blocks`` (not launched; see :func:`launch`).

    Args:
        model: anything ``m2ib.load`` takes (default: the shipped ``shapes`` model), or a backend.
        device: ``cpu``, ``cuda``, ...
        max_upload_mb, max_megapixels: uploads over these limits are refused with a message.
        workdir: where example scenes and downloads are written (default: a temporary folder,
            removed when the process exits); output files older than an hour are deleted.
    """
    gr = import_gradio()
    from .api import load
    from .models import DEFAULT_MODEL

    backend = load(DEFAULT_MODEL if model is None else model, device=device)
    methods = _methods()
    if not methods:
        raise M2IBError("no attribution method is registered")
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="m2ib-serve-")
        _remove_at_exit(workdir)
    workdir = Path(workdir)
    runs = workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    scenes = example_scenes(workdir)
    lock = threading.Lock()  # one explanation at a time on this model, whatever the queue does
    specs = {name: setting_specs(backend, name) for name in methods}
    keys = [(s.method, s.name) for name in methods for s in specs[name]]
    max_bytes, max_pixels = max_upload_mb * 1e6, max_megapixels * 1e6
    size = "x".join(str(v) for v in backend.geometry.image_size)
    device_name = str(getattr(backend, "device", "cpu"))

    blocks_kw = {"title": "m2ib viewer", "analytics_enabled": False, "delete_cache": (KEEP_OUTPUTS_S, KEEP_OUTPUTS_S)}
    with gr.Blocks(**_kw(gr.Blocks.__init__, **blocks_kw)) as demo:
        gr.Markdown(
            f"# m2ib viewer\nWhich image regions and which words make **{html.escape(backend.name)}** match an "
            f"image with a text. Upload an image (or click an example scene), type a text, press **Explain**.",
            elem_id=f"{ELEM}-title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                image = _raw_image_component(gr)(**_kw(
                    gr.Image, label="Image", type="filepath", sources=["upload", "clipboard"], height=300,
                    elem_id=f"{ELEM}-image"))
                text = gr.Textbox(label="Text", placeholder="e.g. a yellow star", lines=1, max_lines=3,
                                  elem_id=f"{ELEM}-text")
                choices = [(cls.title, name) for name, cls in methods.items()]
                choices.append(("Compare all methods", COMPARE_ALL))
                method = gr.Dropdown(**_kw(gr.Dropdown, choices=choices, value=next(iter(methods)), label="Method",
                                           info="\"Compare all methods\" runs each in turn: a row each "
                                           "(minutes on a CPU)", elem_id=f"{ELEM}-method", interactive=True))
                groups, controls = [], []
                with gr.Accordion("Settings (defaults shown)", open=False, elem_id=f"{ELEM}-settings"):
                    for k, (name, cls) in enumerate(methods.items()):
                        with gr.Group(visible=k == 0, elem_id=f"{ELEM}-settings-{name}") as group:
                            gr.Markdown(f"**{cls.title}**" + (f" · [paper]({cls.paper})" if cls.paper else ""))
                            with gr.Row():
                                controls += [_setting_control(gr, s) for s in specs[name]]
                        groups.append(group)
                run = gr.Button("Explain", variant="primary", elem_id=f"{ELEM}-run")
                status = gr.Markdown("", label="Status", elem_id=f"{ELEM}-status")
                gr.Examples(examples=[[p, c] for p, c in scenes], inputs=[image, text],
                            label="Example scenes (click one)", **_kw(gr.Examples, elem_id=f"{ELEM}-examples"))
            with gr.Column(scale=6, min_width=420):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=240):
                        heatmap = gr.Image(**_kw(gr.Image, label="Image attribution", type="pil", format="png",
                                                 interactive=False, height=300, elem_id=f"{ELEM}-heatmap"))
                        gr.Markdown(f"The image as the model saw it ({size} px: resized, centre-cropped) with the "
                                    "map over it; red is high.", elem_id=f"{ELEM}-heatmap-note")
                    with gr.Column(scale=5, min_width=240):
                        gr.Markdown("**Text attribution**")
                        tokens = gr.HTML(**_kw(gr.HTML, value=tokens_html([], []), label="Text attribution",
                                               show_label=False, elem_id=f"{ELEM}-tokens",
                                               min_height=60))
                        similarity = gr.Textbox(label="Image-text similarity (cosine)", interactive=False,
                                                elem_id=f"{ELEM}-similarity")
                figure = gr.Image(**_kw(gr.Image, label="Figure", type="filepath", format="png", interactive=False,
                                        elem_id=f"{ELEM}-figure"))
                files = gr.File(label="Downloads: figure (PNG), maps (.npz), settings and scores (.json)",
                                file_count="multiple", interactive=False, elem_id=f"{ELEM}-files")
        gr.Markdown(f"Model **{html.escape(backend.name)}** on {device_name} · runs on this machine: no analytics, "
                    "no hub access, one explanation at a time · M2IB: [Wang, Rudner and Wilson, NeurIPS 2023]"
                    "(https://arxiv.org/abs/2312.17174)", elem_id=f"{ELEM}-footer")

        def show_settings(selected):
            return [gr.update(visible=selected in (name, COMPARE_ALL)) for name in methods]

        tracker = gr.Progress()

        def explain_clicked(image_path, text_value, method_name, *values, progress=tracker):
            by_method: dict[str, dict[str, Any]] = {}
            for (owner, field_name), value in zip(keys, values):
                by_method.setdefault(owner, {})[field_name] = value
            settings = by_method if method_name == COMPARE_ALL else by_method.get(method_name, {})
            _prune(runs, KEEP_OUTPUTS_S)
            started = time.perf_counter()
            try:
                with lock:
                    result = explain_pair(backend, image_path, text_value, method_name, settings,
                                          workdir=tempfile.mkdtemp(dir=runs), progress=progress,
                                          max_bytes=max_bytes, max_pixels=max_pixels)
            except M2IBError as exc:
                log.warning("rejected: %s", _one_line(exc))
                raise _page_error(gr, str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - the server keeps serving
                log.error("failed: %s", _one_line(exc))
                raise _page_error(gr, f"the explanation failed ({_one_line(exc)}); see the server log") from None
            log.info("explained %r on %s with %s in %.1f s", text_value.strip(), Path(image_path).name,
                     method_name, time.perf_counter() - started)
            return list(result)

        # Name the API's parameters after the settings (m2ib_steps, ...), not param_3, param_4, ...
        P = inspect.Parameter
        explain_clicked.__signature__ = inspect.Signature(
            [P(n, P.POSITIONAL_OR_KEYWORD) for n in ("image", "text", "method")]
            + [P(f"{owner}_{name}".replace("-", "_"), P.POSITIONAL_OR_KEYWORD) for owner, name in keys]
            + [P("progress", P.KEYWORD_ONLY, default=tracker)])
        method.change(show_settings, inputs=method, outputs=groups, queue=False,
                      **_kw(method.change, api_visibility="private"))
        gr.on([run.click, text.submit], explain_clicked, inputs=[image, text, method, *controls],
              outputs=[heatmap, tokens, similarity, figure, files, status],
              **_kw(gr.on, api_name="explain", show_progress="full", concurrency_limit=1,
                    concurrency_id="m2ib-model"))
    demo.queue(default_concurrency_limit=1)
    demo.m2ib_backend = backend  # for callers and tests: the loaded model
    demo.m2ib_setting_keys = keys
    demo.m2ib_setting_groups = {name: f"{ELEM}-settings-{name}" for name in methods}
    return demo


def _page_error(gr, message: str):
    """``gr.Error`` shown in the page without a traceback in the server log."""
    kwargs = _kw(gr.Error.__init__, duration=None, print_exception=False, title="Cannot explain this")
    try:
        return gr.Error(message, **kwargs)
    except TypeError:
        return gr.Error(message)


def _prune(folder: Path, older_than_s: float) -> None:
    """Delete the request folders in ``folder`` older than ``older_than_s``."""
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _remove_at_exit(folder: str | os.PathLike) -> None:
    import atexit

    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def launch(demo, host: str = "127.0.0.1", port: int = 7860, *, share: bool = False, block: bool = True,
           max_upload_mb: float = MAX_UPLOAD_MB) -> str:
    """Start the server and return its address; ``block=True`` then serves until Ctrl+C,
    ``block=False`` returns at once (stop it with ``demo.close()``)."""
    gr = import_gradio()
    kwargs: dict[str, Any] = {
        "server_name": host, "server_port": port, "share": share, "prevent_thread_lock": True, "inbrowser": False,
        "quiet": True, "show_error": False, "css": CSS, "theme": _theme(gr),
        "max_file_size": f"{int(5 * max_upload_mb)}mb",  # a hard cap; the page refuses uploads over 1x
    }
    _, local_url, share_url = demo.launch(**_kw(demo.launch, **kwargs))
    log.info("serving on %s (Ctrl+C to stop)%s", local_url, f"; public link: {share_url}" if share_url else "")
    if block:
        demo.block_thread()
    return local_url


# ----------------------------------------------------------------------------------------------
# Command line: m2ib serve.
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .models import BUILTIN_MODELS, DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="m2ib serve", description="Explain image-text pairs in a web page on this machine (needs "
        f"{INSTALL_HINT}). Offline and private by default: no analytics, no hub access, 127.0.0.1 only.")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name ({', '.join(BUILTIN_MODELS)}), Hugging Face hub id (cached; set "
                        f"HF_HUB_OFFLINE=0 to download) or a local directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it "
                        "to your network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--share", action="store_true",
                        help="also create a temporary public link through Gradio's share servers (off by default)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help=f"largest image file accepted, in MB (default: {MAX_UPLOAD_MB:g})")
    parser.add_argument("--max-megapixels", type=float, default=MAX_MEGAPIXELS,
                        help=f"largest image accepted, in megapixels (default: {MAX_MEGAPIXELS:g})")
    return parser


def _stop_on_sigterm():
    """SIGTERM (e.g. from a service manager) stops the server like Ctrl+C, so that its temporary
    files are removed; returns the previous handler (None when it could not be set)."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, stop)
    except (ValueError, OSError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """``m2ib serve``; returns the exit code (2 for bad input or a missing extra)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not 0 <= args.port <= 65535:
        print(f"m2ib: error: --port {args.port} is not a port number (0..65535)", file=sys.stderr)
        return 2
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        print("m2ib: error: --max-upload-mb and --max-megapixels must be positive", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()  # one line per request on stderr, while this command runs
    handler.setFormatter(logging.Formatter("m2ib serve: %(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    previous_sigterm = _stop_on_sigterm()
    try:
        demo = build_app(args.model, args.device, max_upload_mb=args.max_upload_mb,
                         max_megapixels=args.max_megapixels)
        log.info("model %s on %s; methods: %s", demo.m2ib_backend.name, demo.m2ib_backend.device,
                 ", ".join(_methods()))
        launch(demo, args.host, args.port, share=args.share, block=True, max_upload_mb=args.max_upload_mb)
    except M2IBError as exc:
        print(f"m2ib: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        print(f"m2ib: error: cannot serve on {args.host}:{args.port} ({reason}): choose another --port, "
              "or check --host", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("m2ib: stopped", file=sys.stderr)
        return 130
    finally:
        if previous_sigterm is not None:
            import signal

            signal.signal(signal.SIGTERM, previous_sigterm)
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
    return 0


if __name__ == "__main__":
    sys.exit(main())
