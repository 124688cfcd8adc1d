"""ROAD: RemOve And Debias (Rong et al., ICML 2022), as pytorch-grad-cam's ``metrics/road.py``.

Plain masking (multiplying by the map, or blacking pixels out) leaks the map's *shape* into the
perturbed image: the model can see where pixels were removed. ROAD instead fills removed pixels
by **noisy linear imputation**: each removed pixel takes the weighted mean of its 8 neighbours
(weight 1/6 for the 4 direct ones, 1/12 for the diagonals; neighbours outside the image are
left out), solved jointly for all removed pixels as one sparse linear system per channel, then
Gaussian noise (sd ``noise`` = 0.01, in normalised units) is added to the filled pixels. The
imputation works on the model's normalised pixels, as pytorch-grad-cam's does.

For each percentile ``p`` in 10, 20, ..., 90 the pixels are ranked by the map and ``(100 - p)%``
of them are removed (pytorch-grad-cam's thresholds; here by rank, with random tie-breaking,
which equals its ``map < percentile`` threshold when the map has no ties):

* **MoRF** (most relevant first): the highest-scoring pixels go. Score change
  ``s_imputed - s`` averaged over the percentiles: **lower is better**.
* **LeRF** (least relevant first): the lowest-scoring pixels go. **Higher is better**.
* **Combined** = ``(LeRF - MoRF) / 2`` (pytorch-grad-cam's ``ROADCombined``): **higher is better**.

``s`` is the cosine similarity of the image embedding with the pair's text embedding. Needs
scipy (``pip install scipy``) for the sparse solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..backends.base import Backend, ImageBatch, TextBatch
from ..errors import InputError
from ..settings import check_number, setting
from .base import Key, Measured, MethodRun, Metric, MetricSettings, PairBatch, register
from .common import cosine, descending_order, image_maps, scoring, targets, unit_embeddings

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NOISE = 0.01
# (row offset, column offset) -> weight of that neighbour
NEIGHBOURS = (
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
)


def linear_impute(
    pixels: torch.Tensor, removed: torch.Tensor, noise: float = NOISE, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill the ``removed`` pixels (bool [H, W]) of ``pixels`` [C, H, W] by noisy linear imputation.

    Each removed pixel equals the weighted mean of its in-image neighbours (known or imputed),
    then ``noise * N(0, 1)`` is added to it. Known pixels are unchanged. If every pixel is
    removed there is nothing to interpolate from: they become 0 (+ noise).
    """
    try:
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:  # pragma: no cover - scipy is in the test extra
        raise InputError("ROAD's linear imputation needs scipy: pip install scipy") from None
    c, h, w = pixels.shape
    removed = removed.detach().cpu().bool().reshape(h, w)
    out = pixels.detach().cpu().double().clone()
    unknown = np.flatnonzero(removed.numpy().ravel())
    if unknown.size == 0:
        return out.to(pixels.dtype).to(pixels.device)
    flat = out.reshape(c, -1).numpy()
    if unknown.size < h * w:
        index = -np.ones(h * w, dtype=np.int64)
        index[unknown] = np.arange(unknown.size)
        rows_u, cols_u = np.divmod(unknown, w)
        diag = np.zeros(unknown.size)
        rhs = np.zeros((unknown.size, c))
        a_rows, a_cols, a_vals = [], [], []
        for (dr, dc), weight in NEIGHBOURS:
            r, q = rows_u + dr, cols_u + dc
            inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
            eq = np.flatnonzero(inside)
            neighbour = r[inside] * w + q[inside]
            diag[eq] += weight
            var = index[neighbour]
            is_var = var >= 0
            a_rows.append(eq[is_var])
            a_cols.append(var[is_var])
            a_vals.append(np.full(int(is_var.sum()), -weight))
            known_eq = eq[~is_var]
            np.add.at(rhs, known_eq, weight * flat[:, neighbour[~is_var]].T)
        a_rows.append(np.arange(unknown.size))
        a_cols.append(np.arange(unknown.size))
        a_vals.append(diag)
        matrix = csc_matrix(
            (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
            shape=(unknown.size, unknown.size),
        )
        solution = np.asarray(spsolve(matrix, rhs)).reshape(unknown.size, c)
    else:
        solution = np.zeros((unknown.size, c))
    noise_draw = torch.randn(c, unknown.size, generator=generator, dtype=torch.float64).numpy()
    flat[:, unknown] = solution.T + noise * noise_draw
    return torch.from_numpy(flat.reshape(c, h, w)).to(pixels.dtype).to(pixels.device)


def road_scores(
    backend: Backend,
    images: ImageBatch,
    texts: TextBatch,
    maps: torch.Tensor | Sequence[torch.Tensor],
    *,
    percentiles: Sequence[int] = PERCENTILES,
    noise: float = NOISE,
    seeds: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """ROAD MoRF / LeRF / combined scores of image maps for pairs ``(images[i], texts[i])``.

    Args:
        maps: [N, H, W] image maps at the model's input size.
        percentiles: ``p`` values; ``(100 - p)%`` of the pixels are removed at each.
        noise: sd of the imputation noise (normalised units).
        seeds: per pair, for tie-breaking and the imputation noise (default 0).

    Returns:
        ``{"morf": [N], "lerf": [N], "combined": [N], "morf_curve": [N, P], "lerf_curve": [N, P]}``:
        score changes ``s_imputed - s`` (curves per percentile; the scores their means).
    """
    percentiles = [int(p) for p in percentiles]
    if not percentiles or any(not 0 <= p <= 100 for p in percentiles):
        raise InputError(f"percentiles={percentiles!r} must lie in 0..100")
    maps = image_maps(maps, images)
    n, _, h, w = images.pixel_values.shape
    seeds = [0] * n if seeds is None else list(seeds)
    morf, lerf = [], []
    with scoring(backend):
        target = targets(backend, "image", images, texts)
        s = cosine(unit_embeddings(backend, "image", images), target).cpu()
        for i in range(n):
            g = torch.Generator().manual_seed(int(seeds[i]))
            order = descending_order(maps[i], g)
            copies = []
            for p in percentiles:
                k = int(round((100 - p) / 100 * h * w))
                most = torch.zeros(h * w, dtype=torch.bool)
                most[order[:k]] = True
                least = torch.zeros(h * w, dtype=torch.bool)
                if k:
                    least[order[-k:]] = True
                pixels = images.pixel_values[i]
                copies.append(linear_impute(pixels, most.view(h, w), noise, g))
                copies.append(linear_impute(pixels, least.view(h, w), noise, g))
            batch = ImageBatch(torch.stack(copies))
            scores = cosine(unit_embeddings(backend, "image", batch), target[i : i + 1].expand(len(batch), -1)).cpu()
            morf.append(scores[0::2] - s[i])
            lerf.append(scores[1::2] - s[i])
    morf_curve, lerf_curve = torch.stack(morf), torch.stack(lerf)
    m, le = morf_curve.mean(1), lerf_curve.mean(1)
    return {"morf": m, "lerf": le, "combined": (le - m) / 2, "morf_curve": morf_curve, "lerf_curve": lerf_curve}


@dataclass(frozen=True)
class RoadSettings(MetricSettings):
    """ROAD's options (``m2ib evaluate --road-percentiles 10,50,90``, ``{"road": {"noise": 0.02}}``).

    Attributes:
        percentiles: percentiles p at which (100 - p) % of the pixels are removed; default
            ``(10, 20, 30, 40, 50, 60, 70, 80, 90)`` (pytorch-grad-cam's thresholds).
        noise: sd of the noise added to the imputed pixels, in normalised units; default
            ``0.01`` (pytorch-grad-cam's ROAD).
    """

    percentiles: tuple[int, ...] = setting(PERCENTILES, "percentiles p: (100 - p)% of the pixels are removed at each")
    noise: float = setting(NOISE, "sd of the imputation noise (normalised units)")

    def validate(self) -> None:
        if not self.percentiles or any(not 0 <= p <= 100 for p in self.percentiles):
            raise InputError(f"road_percentiles={','.join(map(str, self.percentiles))!r}: give percentiles in 0..100")
        check_number(self.noise, "road_noise")


@register
class Road(Metric):
    """ROAD's MoRF (lower is better), LeRF and combined (higher is better) score changes; image side only.

    Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods"
    (ROAD), ICML 2022, https://arxiv.org/abs/2202.00449, as pytorch-grad-cam's ``metrics/road.py``.
    Options: :class:`RoadSettings`. Reads image maps [N, H, W]; needs scipy.

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> rows = load_table("shapes:test:2", size=96)
        >>> run = run_evaluation(
        ...     model, rows, ["gradcam"], {"road": {"percentiles": (50,)}}, None, 0, tempfile.mkdtemp(),
        ...     progress=False, report=False,
        ... )
        >>> sorted(run.records[0]["metrics"])
        ['image_road_combined', 'image_road_lerf', 'image_road_morf']
    """

    name = "road"
    title = "ROAD (noisy linear imputation; score change, mean over 10..90 %)"
    paper = "https://arxiv.org/abs/2202.00449"
    sides = ("image",)
    keys = (Key("image_road_morf", "lower"), Key("image_road_lerf", "higher"), Key("image_road_combined", "higher"))
    Settings = RoadSettings
    settings: RoadSettings

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps: Any) -> Measured:
        """MoRF, LeRF and combined score changes of each pair's image (see the module docstring)."""
        r = road_scores(
            batch.backend,
            batch.images,
            batch.texts,
            maps,
            percentiles=self.settings.percentiles,
            noise=self.settings.noise,
            seeds=batch.pair_seeds,
        )
        out = Measured.empty(len(batch))
        for name in ("morf", "lerf", "combined"):
            out.put(f"image_road_{name}", r[name])
        out.put_curve("image_road_morf", r["morf_curve"])
        out.put_curve("image_road_lerf", r["lerf_curve"])
        return out
