"""The interface and registry of the methods that explain a generative VLM's answer.

An answer method is one class with a ``name``, a frozen ``Settings`` dataclass and one hook,
:meth:`AnswerMethod.attribute`: ``(backend, query, settings) -> AnswerScores`` (one score per
image token [K], in the query's layout order, and JSON-ready numbers). It works on any
:class:`~m2ib.generative.base.GenerativeBackend`: through ``image_states`` and ``rest`` (or
``answer_logits``) and, for the methods that read inside the language model, its decoder blocks
(:func:`decoder_layers`). :meth:`AnswerMethod.explain` runs the shared steps around the hook
(eval mode, the model's own mode restored, a non-finite score refused in one line).

Shared helpers: hooks that are always removed (:func:`captured`), eager attention for the block
(:func:`eager_attention`), states with some tokens hidden (:func:`mixed`, :data:`BASELINES`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...errors import InputError
from ...methods.base import AnySettings, Settings
from ...registry import Registry
from ..base import GenerativeBackend, Query, evaluation_mode

#: What a hidden image token's state becomes (occlusion, RISE): zeros, or the mean of the image's token states.
BASELINES = ("zeros", "mean")


@dataclass
class AnswerScores:
    """What :meth:`AnswerMethod.attribute` returns: one score per image token, and the method's numbers."""

    scores: torch.Tensor  # [K], in the query's layout order
    info: dict[str, float] = field(default_factory=dict)
    # more fields of AnswerExplanation the method fitted (M2IB: the per-word maps, the prompt's words)
    fields: dict[str, Any] = field(default_factory=dict)


class AnswerMethod(ABC):
    """Base class of a method that explains an answer: one :meth:`attribute` hook."""

    name: ClassVar[str]  # registry key, ``explain_answer(method=...)`` and ``--method``
    title: ClassVar[str]
    paper: ClassVar[str] = ""
    sides: ClassVar[tuple[str, ...]] = ("image",)
    Settings: ClassVar[type[Settings]] = Settings

    def make_settings(self, **values: Any) -> AnySettings:
        """This method's settings from ``values``; an unknown name or a bad value is one line."""
        names = {f.name for f in dataclasses.fields(self.Settings)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(
                f"unknown setting(s) for answer method {self.name}: {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(names))}"
            )
        return self.Settings(**values)

    @abstractmethod
    def attribute(self, backend: GenerativeBackend, query: Query, settings: Any) -> AnswerScores:
        """Scores [K] of the query's image tokens for its answer (the model in eval mode)."""

    def explain(self, backend: GenerativeBackend, query: Query, settings: Any) -> AnswerScores:
        """:meth:`attribute` in eval mode (the model's own mode restored), its scores checked."""
        with evaluation_mode(backend.model):
            out = self.attribute(backend, query, settings)
        scores = out.scores.detach().float().cpu()
        if scores.shape != (int(query.image_positions.numel()),):
            raise ValueError(
                f"{self.name} gave scores of shape {tuple(scores.shape)} for {query.image_positions.numel()} image tokens"
            )
        if not torch.isfinite(scores).all():
            raise InputError(f"{self.name} gave a non-finite score on this answer (overflow?): check its settings")
        return AnswerScores(scores, dict(out.info), dict(out.fields))


#: Every answer method, in registration order (M2IB first, the default).
ANSWER_METHODS: Registry[type[AnswerMethod]] = Registry("answer method")
#: Class decorator: make an answer method available by its ``name``.
register = ANSWER_METHODS.register


def answer_method(name: str) -> AnswerMethod:
    """The answer method called ``name``; an unknown name is one line listing the choices."""
    if not isinstance(name, str):
        raise InputError(f"method={name!r}: give an answer method's name ({', '.join(ANSWER_METHODS)})")
    return ANSWER_METHODS.get(name)()


# --- helpers ---------------------------------------------------------------------------------
def plain_states(backend: GenerativeBackend, query: Query) -> torch.Tensor:
    """The image-token states [1, K, D] (float, no graph)."""
    with torch.no_grad():
        return backend.image_states(query).detach().float()


def decoder_layers(backend: GenerativeBackend) -> list[Any]:
    """The language model's decoder blocks, in order (transformers' ``get_decoder().layers``)."""
    decoder = backend.model.get_decoder() if hasattr(backend.model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None or len(layers) == 0:
        raise InputError(f"{type(backend.model).__name__}: its language model's decoder blocks were not found")
    return list(layers)


def block_index(layer: int, blocks: int, name: str = "layer") -> int:
    """``layer`` (negative from the end) as an index in ``range(blocks)``; out of range is one line."""
    if not -blocks <= layer < blocks:
        raise InputError(f"{name}={layer} is outside the language model's {blocks} blocks (0 to {blocks - 1})")
    return layer % blocks


@contextlib.contextmanager
def captured(modules: Sequence[torch.nn.Module], pick: int = 0) -> Iterator[list[torch.Tensor]]:
    """The modules' outputs (element ``pick`` of a tuple output), appended in the order they run, during
    the block; the hooks are removed after it, whatever happens."""
    got: list[torch.Tensor] = []

    def read(module: torch.nn.Module, args: Any, output: Any) -> None:
        got.append(output[pick] if isinstance(output, tuple) else output)

    handles = [m.register_forward_hook(read) for m in modules]
    try:
        yield got
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The language model computes its attention weights explicitly (``eager``) during the block, so
    that its attention modules return them; its own implementation (``sdpa``, ...) is restored after."""
    config = model.config.get_text_config()
    before = config._attn_implementation_internal
    config._attn_implementation_internal = "eager"
    try:
        yield
    finally:
        config._attn_implementation_internal = before


def baseline_states(states: torch.Tensor, baseline: str) -> torch.Tensor:
    """The state [1, 1, D] a hidden image token takes: zeros, or the mean of ``states`` [1, K, D] over its tokens."""
    if baseline == "mean":
        return states.mean(1, keepdim=True)
    return torch.zeros_like(states[:, :1])


def mixed(states: torch.Tensor, keep: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """States [B, K, D]: ``keep`` [B, K] in [0, 1] of each token's state, the rest the baseline [1, 1, D]."""
    keep = keep.to(states.dtype)[..., None]
    return keep * states + (1 - keep) * baseline


def progress(total: int, desc: str) -> Any:
    """A progress bar over ``total`` forward copies (shown on a terminal only: a real model's RISE runs thousands)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="copy", leave=False, disable=None, dynamic_ncols=True)


def batched_rest(backend: GenerativeBackend, query: Query, make: Any, count: int, max_batch: int) -> torch.Tensor:
    """``backend.rest`` on ``make(start, stop)`` [stop - start, K, D] for every chunk of ``range(count)``
    (at most ``max_batch`` copies a pass), without a graph: the log-likelihoods [count]."""
    out = []
    with torch.no_grad(), progress(count, "occlusion") as bar:
        for start in range(0, count, max_batch):
            stop = min(count, start + max_batch)
            out.append(backend.rest(query, make(start, stop)).float())
            bar.update(stop - start)
    return torch.cat(out)


__all__ = [
    "ANSWER_METHODS",
    "BASELINES",
    "AnswerMethod",
    "AnswerScores",
    "answer_method",
    "baseline_states",
    "batched_rest",
    "block_index",
    "captured",
    "decoder_layers",
    "eager_attention",
    "mixed",
    "plain_states",
    "progress",
    "register",
]
