"""The settings panel: one control per setting of each method, from :mod:`m2ib.settings`."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..settings import SettingField, fields_of
from .environment import accepted
from .render import ELEM

AUTO = "auto (model's recommended)"


@dataclasses.dataclass(frozen=True)
class SettingSpec:
    """What the page shows for one setting of one method: the field, and this model's values."""

    method: str
    field: SettingField
    value: Any  # shown initially; None for "auto"
    help: str
    auto: str | None = None  # placeholder for an empty (auto) value, e.g. "auto (model's recommended: 9)"

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def kind(self) -> type:
        return self.field.kind

    @property
    def choices(self) -> tuple | None:
        return self.field.choices

    @property
    def elem_id(self) -> str:
        return f"{ELEM}-setting-{self.method}-{self.name}".replace("_", "-")


def setting_specs(backend: Any, method: str) -> list[SettingSpec]:
    """The controls of ``method``'s settings, with the defaults this model would use."""
    from ..methods import REGISTRY

    cls = REGISTRY[method]
    algorithm = cls()
    try:
        effective = algorithm.make_settings(backend)  # defaults, then the model's recommended values
    except Exception:  # noqa: BLE001 - a method whose recommended values do not validate still gets its defaults
        effective = cls.Settings()
    try:
        resolved = algorithm.resolved(backend, effective)
    except Exception:  # noqa: BLE001 - only used for the "auto" hints
        resolved = effective
    specs = []
    for field in fields_of(cls.Settings):
        help_text, auto = field.help, None
        value = None if field.default is None else getattr(effective, field.name)
        if field.default is None:
            shown = getattr(resolved, field.name, None)
            auto = AUTO if shown is None else f"auto (model's recommended: {shown})"
        elif value != field.default:
            help_text = f"{help_text} (model's recommended; the method's default is {field.default})"
        specs.append(SettingSpec(method, field, value, help_text, auto))
    return specs


def clean_settings(method: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Page values -> keyword arguments for ``m2ib.explain``.

    ``None`` and empty text mean auto (the model's recommended value); the rest is read by the
    setting's own field (numbers typed as text, whole floats for integer settings). Names the
    method does not have are passed on, for the method to report.
    """
    from ..methods import REGISTRY

    return clean_values(REGISTRY[method].Settings, settings)


def clean_values(settings_class: type, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`clean_settings` for any settings dataclass (the interaction methods' too)."""
    fields = {f.name: f for f in fields_of(settings_class)}
    out = {}
    for name, value in (settings or {}).items():
        field = fields.get(name)
        if value is None:
            continue
        if field is None:
            out[name] = value
            continue
        if isinstance(value, str) and field.kind is not str:
            text = value.strip()
            if not text or text.lower().startswith("auto"):
                continue
        if isinstance(value, str) and field.optional and not value.strip():  # an empty text box: auto (None)
            continue
        out[name] = field.parse(value)
    return out


def setting_control(gr, spec: SettingSpec):
    """The Gradio component of one setting (``field.control`` says which)."""
    control = spec.field.control
    common = {"label": spec.name, "info": spec.help, "elem_id": spec.elem_id, "interactive": True, "min_width": 180}
    if control == "choice" and spec.choices is not None:
        return gr.Dropdown(**accepted(gr.Dropdown, choices=list(spec.choices), value=spec.value, **common))
    if control == "checkbox":
        return gr.Checkbox(**accepted(gr.Checkbox, value=bool(spec.value), **common))
    if control == "auto":  # empty means auto (a Number would show and send 0)
        return gr.Textbox(**accepted(gr.Textbox, value="", placeholder=spec.auto, **common))
    if control in ("integer", "number"):
        return gr.Number(
            **accepted(
                gr.Number,
                value=spec.value,
                precision=0 if control == "integer" else None,
                placeholder=spec.auto,
                **common,
            )
        )
    return gr.Textbox(**accepted(gr.Textbox, value=spec.value, placeholder=spec.auto, **common))


def name_api_parameters(
    fn: Callable, keys: Sequence[tuple[str, str]], tracker: Any, leading: Sequence[str] = ("image", "text", "method")
) -> Callable:
    """Give a button's callback the signature Gradio's API shows: ``leading`` (image, text, method), then
    one parameter per setting (``m2ib_steps``, ``exclip_text_layer``, ...), not param_3, param_4, ..."""
    P = inspect.Parameter
    # What inspect.signature reads; through __dict__, as typeshed declares no __signature__ on functions.
    fn.__dict__["__signature__"] = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD) for n in leading]
        + [P(f"{owner}_{name}".replace("-", "_"), P.POSITIONAL_OR_KEYWORD) for owner, name in keys]
        + [P("progress", P.KEYWORD_ONLY, default=tracker)]
    )
    return fn


def one_line(exc: BaseException) -> str:
    """An exception as one log line (imported lazily: the api pulls torch in)."""
    from ..api import one_line as line

    return line(exc)


@contextlib.contextmanager
def reported(errors: Callable[[str], Exception], what: str) -> Iterator[None]:
    """One model job of a tab: bad input (an ``M2IBError``) becomes its one line in the page; any other
    failure is logged and becomes a short line naming ``what`` failed (the server keeps serving)."""
    from ..errors import M2IBError

    log = logging.getLogger("m2ib.serve")
    try:
        yield
    except M2IBError as exc:
        log.warning("rejected: %s", one_line(exc))
        raise errors(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the server keeps serving
        log.error("failed: %s", one_line(exc))
        raise errors(f"the {what} failed ({one_line(exc)}); see the server log") from None


def settings_accordion(
    gr: Any, methods: Mapping[str, Any], specs: Mapping[str, Sequence[Any]], prefix: str
) -> tuple[list, list]:
    """The "Settings" accordion: one group of controls per method (the first visible), each headed
    by the method's title and paper. Returns ``(groups, controls)``."""
    groups, controls = [], []
    with gr.Accordion("Settings (defaults shown)", open=False, elem_id=f"{prefix}-settings"):
        for k, (name, cls) in enumerate(methods.items()):
            with gr.Group(visible=k == 0, elem_id=f"{prefix}-settings-{name}") as group:
                gr.Markdown(f"**{cls.title}**" + (f" · [paper]({cls.paper})" if cls.paper else ""))
                with gr.Row():
                    controls += [setting_control(gr, s) for s in specs[name]]
            groups.append(group)
    return groups, controls
