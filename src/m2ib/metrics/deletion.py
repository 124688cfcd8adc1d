"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018) and their areas.

The target score is the cosine similarity of the explained side's embedding with the other
side's fixed embedding. Inputs units (pixels, or word tokens) are ranked by the map, highest
first; equal scores are ordered at random with the pair's seed.

* **Deletion**: remove the top fraction ``f`` of the units, for ``f = 0, 1/K, ..., 1``, and score
  each copy. Image: removed pixels are set to 0 in normalised space (the dataset's mean
  colour). Text: removed words are masked out through the attention mask (start and end
  tokens always stay). The area under the curve over ``f`` in [0, 1]: **lower is better**
  (the score falls fast when the units the map ranks first go).
* **Insertion**: start from a blurred image (Gaussian, sigma = ``5 * H / 224`` pixels, edges
  replicated, in normalised space) or from the start and end tokens only, and put back the top fraction
  ``f`` of the units. Area under the curve: **higher is better**.

Image curves use ``K = steps`` (default 20) equal steps. A text with ``n`` words has ``n + 1``
points ``k / n``; its area is taken on those points and its curve is interpolated linearly to
the common grid of ``steps + 1`` fractions for averaging across texts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..settings import check_positive_int, setting
from .base import (
    Key,
    Measured,
    MethodRun,
    Metric,
    MetricSettings,
    PairBatch,
    PlotCanvas,
    mean_curve,
    modality_of,
    register,
)
from .common import (
    cosine,
    descending_order,
    image_maps,
    scoring,
    targets,
    text_maps,
    trapezoid,
    unit_embeddings,
    word_positions,
)


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] (edge-replicating padding, kernel radius ceil(3 sigma))."""
    if sigma <= 0:
        return pixels.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=pixels.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(pixels.dtype)
    c = pixels.shape[1]
    out = F.pad(pixels, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out


def deletion_insertion(
    backend: Backend,
    images: ImageBatch,
    texts: TextBatch,
    maps: torch.Tensor | Sequence[torch.Tensor],
    *,
    modality: Modality,
    steps: int = 20,
    seeds: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves of ``modality``'s maps for pairs ``(images[i], texts[i])``.

    Args:
        maps: as for :func:`~m2ib.metrics.confidence_change`.
        steps: K, the number of equal steps of the fraction removed/inserted (K + 1 points).
        seeds: one seed per pair for breaking ties between equal scores (default 0 for all).

    Returns:
        ``{"fractions": [K+1], "deletion": [N, K+1], "insertion": [N, K+1], "deletion_auc": [N],
        "insertion_auc": [N]}`` of cosine similarities (CPU; NaN for a text with no word).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps={steps!r} must be a positive integer")
    n = len(images)
    seeds = [0] * n if seeds is None else list(seeds)
    fractions = torch.linspace(0.0, 1.0, steps + 1)
    if modality == "image":
        deletion, insertion = _image_curves(backend, images, texts, image_maps(maps, images), fractions, seeds)
        return {
            "fractions": fractions,
            "deletion": deletion,
            "insertion": insertion,
            "deletion_auc": trapezoid(deletion, fractions),
            "insertion_auc": trapezoid(insertion, fractions),
        }
    if modality == "text":
        return _text_curves(backend, images, texts, text_maps(maps, texts), fractions, seeds)
    raise InputError(f"modality={modality!r}: use 'image' or 'text'")


def _image_curves(backend, images, texts, maps, fractions, seeds):
    n, _, h, w = images.pixel_values.shape
    sigma = 5.0 * h / 224.0
    counts = [int(round(float(f) * h * w)) for f in fractions]
    deletion, insertion = [], []
    with scoring(backend):
        target = targets(backend, "image", images, texts)
        for i in range(n):
            pixels = images.pixel_values[i : i + 1]
            blurred = gaussian_blur(pixels.float(), sigma).to(pixels.dtype)
            order = descending_order(maps[i], torch.Generator().manual_seed(int(seeds[i])))
            rank = torch.empty(h * w, dtype=torch.long)
            rank[order] = torch.arange(h * w)
            rank = rank.view(1, h, w).to(pixels.device)
            top = torch.stack([rank < k for k in counts])  # [K+1, 1, H, W]: the top-k pixels
            dele = torch.where(top, torch.zeros_like(pixels), pixels)
            ins = torch.where(top, pixels, blurred)
            batch = ImageBatch(torch.cat([dele, ins]))
            scores = cosine(unit_embeddings(backend, "image", batch), target[i : i + 1].expand(len(batch), -1)).cpu()
            deletion.append(scores[: len(counts)])
            insertion.append(scores[len(counts) :])
    return torch.stack(deletion), torch.stack(insertion)


def _text_curves(backend, images, texts, maps, fractions, seeds):
    n = len(texts)
    k_points = fractions.shape[0]
    deletion = torch.full((n, k_points), float("nan"))
    insertion = torch.full((n, k_points), float("nan"))
    deletion_auc = torch.full((n,), float("nan"))
    insertion_auc = torch.full((n,), float("nan"))
    with scoring(backend):
        target = targets(backend, "text", images, texts)
        for i in range(n):
            words = word_positions(texts, i)
            if not words:
                continue
            order = descending_order(maps[i][words], torch.Generator().manual_seed(int(seeds[i])))
            ranked = [words[j] for j in order.tolist()]
            m = len(ranked)
            base = texts.attention_mask[i : i + 1]
            dele = base.repeat(m + 1, 1)
            ins = base.repeat(m + 1, 1)
            ins[:, ranked] = 0
            for k in range(1, m + 1):
                dele[k, ranked[:k]] = 0
                ins[k, ranked[:k]] = 1
            ids = texts.input_ids[i : i + 1].repeat(2 * (m + 1), 1)
            batch = TextBatch(ids, torch.cat([dele, ins]))
            scores = cosine(unit_embeddings(backend, "text", batch), target[i : i + 1].expand(len(batch), -1)).cpu()
            own = torch.linspace(0.0, 1.0, m + 1)
            d, s = scores[: m + 1], scores[m + 1 :]
            deletion_auc[i] = trapezoid(d, own)
            insertion_auc[i] = trapezoid(s, own)
            deletion[i] = _interp(fractions, own, d)
            insertion[i] = _interp(fractions, own, s)
    return {
        "fractions": fractions,
        "deletion": deletion,
        "insertion": insertion,
        "deletion_auc": deletion_auc,
        "insertion_auc": insertion_auc,
    }


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of (xp, fp) at x (xp increasing, covering [0, 1])."""
    idx = torch.searchsorted(xp, x, right=True).clamp(1, xp.shape[0] - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    t = torch.where(x1 > x0, (x - x0) / (x1 - x0), torch.zeros_like(x))
    return y0 + t * (y1 - y0)


@dataclass(frozen=True)
class DeletionSettings(MetricSettings):
    """Deletion/insertion's options (``m2ib evaluate --deletion-steps 10``,
    ``{"deletion": {"steps": 10}}``).

    Attributes:
        steps: steps K of the image curves (K + 1 points, fractions k / K of the pixels removed
            or put back; text curves are interpolated to the same grid); default ``20``.
    """

    steps: int = setting(20, "steps K of the deletion/insertion curves (K + 1 points)")

    def validate(self) -> None:
        check_positive_int(self.steps, "deletion_steps")


@register
class DeletionInsertion(Metric):
    """Areas under the deletion (lower is better) and insertion (higher is better) curves.

    Petsiuk, Das, Saenko, "RISE", BMVC 2018, https://arxiv.org/abs/1806.07421.
    Options: :class:`DeletionSettings`. Reads image maps [N, H, W] (pixels ranked) and text maps
    [T_i] (words ranked); records ``{side}_deletion_auc`` and ``{side}_insertion_auc`` per pair,
    and the curves.

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> rows = load_table("shapes:test:2", size=96)
        >>> run = run_evaluation(
        ...     model, rows, ["gradcam"], {"deletion": {"steps": 4}}, None, 0, tempfile.mkdtemp(),
        ...     progress=False, report=False,
        ... )
        >>> sorted(run.records[0]["metrics"])
        ['image_deletion_auc', 'image_insertion_auc', 'text_deletion_auc', 'text_insertion_auc']
    """

    name = "deletion"
    title = "Deletion / insertion (area under the cosine-similarity curve)"
    paper = "https://arxiv.org/abs/1806.07421"
    keys = (
        Key("image_deletion_auc", "lower"),
        Key("image_insertion_auc", "higher"),
        Key("text_deletion_auc", "lower"),
        Key("text_insertion_auc", "higher"),
    )
    Settings = DeletionSettings
    settings: DeletionSettings

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps: Any) -> Measured:
        """Both curves and their areas for each pair of ``batch`` (see the module docstring)."""
        r = deletion_insertion(
            batch.backend,
            batch.images,
            batch.texts,
            maps,
            modality=modality_of(side),
            steps=self.settings.steps,
            seeds=batch.pair_seeds,
        )
        out = Measured.empty(len(batch))
        out.put(f"{side}_deletion_auc", r["deletion_auc"])
        out.put(f"{side}_insertion_auc", r["insertion_auc"])
        out.put_curve(f"{side}_deletion", r["deletion"])
        out.put_curve(f"{side}_insertion", r["insertion"])
        return out

    def plots(self, records: Sequence[dict[str, Any]], methods: Sequence[str], canvas: PlotCanvas) -> dict[str, Path]:
        """The mean deletion and insertion curves of each method, per side."""
        pairs = [r for r in records if r.get("kind") == "pair"]
        files = {}
        for side in ("image", "text"):
            if not any(f"{side}_deletion" in r["curves"] for r in pairs):
                continue
            fig = canvas.figure((10, 4))
            for ax, kind in zip(fig.subplots(1, 2), ("deletion", "insertion")):
                for m in methods:
                    curves = [
                        r["curves"][f"{side}_{kind}"]
                        for r in pairs
                        if r["method"] == m and f"{side}_{kind}" in r["curves"]
                    ]
                    if curves:
                        y = mean_curve(curves)
                        x = [j / (len(y) - 1) for j in range(len(y))]
                        ax.plot(x, y, label=canvas.label(m), color=canvas.style(m)["color"])
                better = "lower" if kind == "deletion" else "higher"
                ax.set_title(f"{side} {kind} (area: {better} is better)")
                ax.set_xlabel(
                    "fraction of "
                    + ("pixels" if side == "image" else "words")
                    + (" removed" if kind == "deletion" else " inserted")
                )
                ax.set_ylabel("cosine similarity")
            canvas.legend(fig.axes[1])
            files[f"{side}_deletion_insertion"] = canvas.save(fig, f"{side}_deletion_insertion")
        return files
