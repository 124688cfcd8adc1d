"""The method interface and registry.

A method is one class with a ``name``, a frozen ``Settings`` dataclass and one hook,
:meth:`Method.attribute`, that returns raw scores for one modality of a batch of pairs.
The base class runs the shared steps around it (eval mode and frozen weights, the target,
turning token scores into maps, normalising, building Explanations), so a new method is one
file plus ``@register``. The CLI's ``--method`` choices and ``m2ib.list_methods()`` read the
registry (:data:`REGISTRY`, an :class:`m2ib.registry.Registry`), nowhere else.

The target: every method explains, per pair, one number computed from the explained side's
embedding: :meth:`Target.score`. By default it is the cosine similarity with the other side's
embedding. With ``negatives`` (texts) it is a margin:

* image side: ``cos(image, text) - mean_k cos(image, negative_k)``, so the map shows what
  makes the image match its text *rather than* the negative texts;
* text side: the same margin, as a function of the explained text: the negatives' term is the
  image's similarity to them, a constant, so text maps equal those without negatives (what
  changes is only the number that RISE-like methods average, by a constant).
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..explanation import Explanation
from ..maps import finite, minmax  # noqa: F401 - re-exported: methods import them from here
from ..registry import Registry
from ..settings import SettingsBase, check_seed, setting

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device: torch.device, precision: str):
    """Reduced-precision autocast for ``bf16``/``fp16``; nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Settings(SettingsBase):
    """Base of every method's settings: one field per setting (see :func:`m2ib.settings.setting`)."""

    seed: int = setting(0, "random seed; the same seed gives the same maps for a pair, alone or in a batch")

    def __post_init__(self) -> None:
        check_seed(self.seed)  # the generators' range, named as such (before the general int64 check)
        super().__post_init__()


# The class bodies below shadow the name ``Settings`` with their ``Settings`` ClassVar (each method's
# own class, a value to mypy, not a type): their annotations name the base class by this alias.
AnySettings: TypeAlias = Settings


@dataclass(frozen=True)
class Target:
    """What is explained for each pair: a score of the explained side's embedding.

    ``score(e)`` is ``cos(e, embeddings[i]) - mean_k cos(e, negatives[k]) - offset[i]`` for the
    embedding ``e`` of pair ``i`` (the negative and offset terms only when given). Rows of
    ``e`` may hold ``k`` copies of every pair, copies of one pair adjacent (as ``suffix``
    takes them). Every method that differentiates, optimises or evaluates a target uses
    this, M2IB's fit term included.
    """

    embeddings: torch.Tensor  # [N, E] unit-norm embeddings of the other modality, one per pair
    negatives: torch.Tensor | None = None  # [K, E] unit-norm negative embeddings (the image side)
    offset: torch.Tensor | None = None  # [N] constant subtracted per pair (the text side's margin term)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> Target:
        """The target of pairs ``index`` (e.g. one row per perturbed copy)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.embeddings.device)
        return Target(self.embeddings[index], self.negatives, None if self.offset is None else self.offset[index])

    def repeat_interleave(self, k: int) -> Target:
        return self.select(torch.arange(len(self), device=self.embeddings.device).repeat_interleave(k))

    def to(self, device: torch.device | str) -> Target:
        return Target(
            self.embeddings.to(device),
            None if self.negatives is None else self.negatives.to(device),
            None if self.offset is None else self.offset.to(device),
        )

    def score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-row target [M] of projected (not necessarily normalised) embeddings [M, E]."""
        target = self.embeddings
        rows, n = embeddings.shape[0], target.shape[0]
        copies = rows // n
        if copies * n != rows:
            raise ValueError(f"{rows} embeddings for a target of {n} pairs")
        if copies > 1:
            target = target.repeat_interleave(copies, 0)
        emb = embeddings.float()
        out = F.cosine_similarity(emb, target, dim=-1, eps=1e-6)
        if self.negatives is not None:
            unit = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            out = out - (unit @ self.negatives.T).mean(-1)
        if self.offset is not None:
            offset = self.offset if copies == 1 else self.offset.repeat_interleave(copies, 0)
            out = out - offset
        return out


def make_target(
    modality: Modality, image_emb: torch.Tensor, text_emb: torch.Tensor, negative_emb: torch.Tensor | None
) -> Target:
    """The target for explaining ``modality`` (see the module docstring for the margin)."""
    if modality == "image":
        return Target(text_emb, negative_emb)
    offset = None if negative_emb is None else (image_emb @ negative_emb.T).mean(-1)
    return Target(image_emb, None, offset)


@dataclass
class RawScores:
    """What :meth:`Method.attribute` returns for one modality of a batch."""

    scores: torch.Tensor  # image: [N, tokens] or [N, rows, cols] or [N, H, W]; text: [N, T] (padded)
    info: list[dict[str, Any]] = field(default_factory=list)  # per pair, JSON-ready numbers


class Configurable:
    """What every method has, first-order or interaction (:class:`m2ib.interactions.InteractionMethod`):
    a name, a title, a paper, its ``Settings`` and :meth:`make_settings`."""

    name: ClassVar[str]  # registry key and CLI choice
    title: ClassVar[str]  # display name
    paper: ClassVar[str] = ""  # link to the paper
    Settings: ClassVar[type[Settings]] = Settings

    def make_settings(self, backend: Backend | None = None, **overrides: Any) -> AnySettings:
        """Defaults, then the model's recommended values for this method, then ``overrides``."""
        names = {f.name for f in dataclasses.fields(self.Settings)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(
                f"unknown setting(s) for {self.name}: {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        values = {}
        if backend is not None:
            values.update({k: v for k, v in backend.recommended.get(self.name, {}).items() if k in names})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return self.Settings(**values)


class Method(Configurable, ABC):
    """Base class: shared steps around one ``attribute`` hook."""

    Settings: ClassVar[type[Settings]] = Settings  # redeclared: the hooks' ``settings`` are each method's own
    modalities: ClassVar[tuple[Modality, ...]] = ("image", "text")  # what it can explain
    uses_target: ClassVar[bool] = True  # False for methods that ignore the target (attention rollout)

    # The hooks' ``settings`` is typed Any: each method narrows it to its own class, which a
    # parameter typed with the base class would forbid (mypy's override rule).
    def resolved(self, backend: Backend, settings: Any) -> AnySettings:
        """Settings with model-dependent defaults filled in (e.g. ``None`` layers). Hook."""
        return settings

    def degenerate_hint(self, settings: Any, side: Modality) -> str:
        """What to change when ``side``'s map ranks nothing (:meth:`Explanation.problems`), naming the
        settings and their values; "" when the method has nothing to suggest. Hook."""
        return ""

    def precision_of(self, settings: Any) -> str:
        """The towers' arithmetic under ``settings``, one of :data:`PRECISIONS`: the embeddings
        that define the target are computed in it. Hook for methods with a precision setting."""
        return "fp32"

    @abstractmethod
    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: Any,
    ) -> RawScores:
        """Raw relevance of ``modality``'s input units for each image-text pair.

        Args:
            backend: the model.
            modality: ``"image"`` or ``"text"``: which side to explain.
            images: N preprocessed images (pair i is ``images[i]`` with ``texts[i]``).
            texts: N tokenised texts.
            target: what to explain: ``target.score(embeddings)`` [N] for the explained side's
                embeddings (cosine with the other side, or the margin over negatives).
            settings: this method's settings, resolved.
        """

    def explain(
        self,
        backend: Backend,
        images: ImageBatch,
        texts: TextBatch,
        settings: AnySettings,
        modalities: Sequence[Modality] = ("image", "text"),
        negatives: TextBatch | None = None,
    ) -> list[Explanation]:
        """Explain pairs ``(images[i], texts[i])``; returns one Explanation per pair.

        ``negatives``: tokenised texts; the target becomes the margin of each pair's similarity
        over the mean similarity to them (see the module docstring).
        """
        if len(images) != len(texts):
            raise InputError(f"{len(images)} images but {len(texts)} texts: give one text per image")
        for m in modalities:
            if m not in self.modalities:
                raise InputError(f"{self.name} cannot explain the {m} side")
        if negatives is not None and len(negatives) and not self.uses_target:
            raise InputError(f"{self.name} has no target: negatives do not apply to it")
        settings = self.resolved(backend, settings)
        with backend.attribution_mode():
            with torch.no_grad(), autocast(backend.device, self.precision_of(settings)):
                image_emb = F.normalize(backend.embed("image", images).float(), dim=-1)
                text_emb = F.normalize(backend.embed("text", texts).float(), dim=-1)
                negative_emb = None
                if negatives is not None and len(negatives):
                    negative_emb = F.normalize(backend.embed("text", negatives).float(), dim=-1)
            similarity = (image_emb * text_emb).sum(-1).cpu()
            raw: dict[Modality, RawScores] = {}
            for m in modalities:
                target = make_target(m, image_emb, text_emb, negative_emb)
                raw[m] = self.attribute(backend, m, images, texts, target, settings)
        exps = self._assemble(backend, images, texts, raw, similarity, settings)
        if negatives is not None and negative_emb is not None:
            margins = make_target("image", image_emb, text_emb, negative_emb).score(image_emb).tolist()
            for exp, margin in zip(exps, margins):
                exp.settings["negatives"] = list(negatives.texts)
                exp.info["margin"] = margin
        return exps

    # --- shared post-processing --------------------------------------------------------
    def _assemble(
        self,
        backend: Backend,
        images: ImageBatch,
        texts: TextBatch,
        raw: dict[Modality, RawScores],
        similarity: torch.Tensor,
        settings: AnySettings,
    ) -> list[Explanation]:
        display = images.display if images.display is not None else backend.display_images(images.pixel_values)
        display = display.detach().float().cpu()
        image_grids = image_maps = image_norm = None
        if "image" in raw:  # batched on the model's device, then one copy to the CPU
            image_grids, image_maps = image_scores_to_maps(raw["image"].scores.detach().float(), backend)
            image_norm = minmax(image_maps).cpu()
            image_maps = image_maps.cpu()
            image_grids = None if image_grids is None else image_grids.cpu()
        text_scores = raw["text"].scores.detach().float().cpu() if "text" in raw else None
        lengths = texts.lengths.tolist()
        settings_dict = settings.as_dict()
        out = []
        for i in range(len(images)):
            exp = Explanation(
                text=texts.texts[i] if texts.texts else "",
                tokens=list(texts.tokens[i]) if texts.tokens else [],
                image=display[i],
                image_map=None,
                text_map=None,
                special_tokens=tuple(texts.special[i]) if texts.special else (),
                word_ids=tuple(texts.words[i]) if texts.words else (),
                similarity=float(similarity[i]),
                method=self.name,
                settings=dict(settings_dict),
                model=backend.name,
                image_source=images.sources[i] if images.sources else "",
                settings_source=backend.settings_source,
                info={m: r.info[i] for m, r in raw.items() if r.info},
            )
            if image_maps is not None and image_norm is not None:  # set together
                exp.image_map_raw, exp.image_map = image_maps[i], image_norm[i]
                exp.image_grid = None if image_grids is None else image_grids[i]
            if text_scores is not None:
                exp.text_map_raw = finite(text_scores[i, : lengths[i]])
                exp.text_map = minmax(exp.text_map_raw[None])[0]
            out.append(exp)
        return out


def image_scores_to_maps(scores: torch.Tensor, backend: Backend) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Raw image scores -> (patch grid or None, [N, H, W] map at input resolution).

    Token scores [N, tokens] lose the prefix tokens (CLS, registers) and are reshaped to
    the grid of the layer they come from (``backend.image_grid_of``); grids are upsampled bilinearly (as in the paper's code).
    """
    g = backend.geometry
    if scores.ndim == 2:  # the grid of the layer with that many tokens (ResNet stages differ by layer)
        grid = backend.image_grid_of(scores.shape[1])
        if grid is None:
            rows, cols = g.patch_grid
            raise ValueError(
                f"image token scores have {scores.shape[1]} tokens, expected "
                f"{g.image_prefix_tokens + rows * cols} (or another layer's grid)"
            )
        scores = scores[:, g.image_prefix_tokens :].reshape(-1, *grid)
    scores = finite(scores)
    if tuple(scores.shape[-2:]) == tuple(g.image_size):
        return None, scores
    maps = F.interpolate(scores[:, None], size=g.image_size, mode="bilinear", align_corners=False)[:, 0]
    return scores, maps


REGISTRY: Registry[type[Method]] = Registry("method")
#: Class decorator: make a method available by its ``name``.
register = REGISTRY.register
