"""Sanity check: cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018).

The explained tower of a **copy** of the model (the user's model is never touched) is
randomised cumulatively from the top down: first its head (final norm and projection), then
each block from the last to the first, then its embeddings. After each step the method
explains the same pair with the same settings and seed, and the new map is compared with the
map of the trained model:

* **Spearman rank correlation** of the two maps (all pixels, or all tokens); a map that is
  constant has no ranking, and its correlation is reported as 0.
* **SSIM** (Wang et al. 2004: Gaussian window, sigma 1.5, 11 x 11, data range 1, valid region)
  of the two image maps (image side only).

A method whose maps depend on what the model learnt must change: **lower is better** for both.
Summaries report the mean over the cascade steps of ``|Spearman|`` (an inverted map still keeps
the trained model's structure) and of SSIM; the signed per-step values are kept as curves.
Randomisation re-runs each module's own ``reset_parameters`` (torch's default initialisation;
LayerNorms become identity) under a seed per step, and redraws any other parameter from
N(0, sd of its trained values).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, Modality, Part, TextBatch  # noqa: F401 (Part: re-exported)
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
    number,
    numbers,
    register,
)


def randomise_(objects: Sequence[Any], seed: int) -> None:
    """Re-initialise modules and parameters in place, deterministically from ``seed``."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        done: set[int] = set()
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                for module in obj.modules():
                    if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                        module.reset_parameters()
                        done.update(id(p) for p in module.parameters(recurse=False))
                params = [p for p in obj.parameters() if id(p) not in done]
            else:
                params = [obj]
            for p in params:
                if id(p) in done:
                    continue
                sd = float(p.float().std()) if p.numel() > 1 else 0.02
                p.normal_(0.0, sd if sd > 0 else 0.02)
                done.add(id(p))


def chosen_steps(total: int, steps: int | None) -> list[int]:
    """Indices of the cascade points kept: all, or ``steps`` evenly spaced ones (first and last included)."""
    if steps is None or steps >= total:
        return list(range(total))
    if steps < 1:
        raise InputError(f"sanity steps={steps!r} must be a positive integer")
    if steps == 1:
        return [0]
    return sorted({round(j * (total - 1) / (steps - 1)) for j in range(steps)})


def randomised_cascade(
    backend: Backend, modality: Modality, seed: int = 0, steps: int | None = None
) -> Iterator[tuple[str, Backend]]:
    """Yield ``(label, backend)`` after each kept cascade step, on ONE deep copy of the model
    randomised cumulatively from the top (the yielded backend changes in place between steps)."""
    model = copy.deepcopy(backend.model)
    randomised = dataclasses.replace(backend, model=model, dtype_copies={})
    parts = randomised.cascade_parts(modality)  # the copy's own parts
    keep = set(chosen_steps(len(parts), steps))
    for index, (label, objects) in enumerate(parts):
        randomise_(objects, seed * 1009 + index)
        if index in keep:
            yield label, randomised


def randomised_above(backend: Backend, layers: dict[Modality, int | None], seed: int = 0) -> Backend:
    """A copy of ``backend`` whose towers are randomised above a block each: for ``{tower: layer}``
    its head and every block above ``layer`` (``None``: every block, the embeddings kept), as the
    cascade of :func:`randomised_cascade` randomises them (same seeds), so the output of block
    ``layer`` is the trained model's and everything computed from it is random. The model given is
    never touched."""
    model = copy.deepcopy(backend.model)
    randomised = dataclasses.replace(backend, model=model, dtype_copies={})
    for modality, layer in layers.items():
        parts = randomised.cascade_parts(modality)  # head, block L-1, ..., block 0, embeddings
        labels = [label for label, _ in parts]
        blocks = sum(label.startswith("block ") for label in labels)
        if layer is not None and not 0 <= layer < blocks:
            raise InputError(f"the {modality} tower has blocks 0..{blocks - 1}, not {layer}")
        last = "head" if layer == blocks - 1 else f"block {0 if layer is None else layer + 1}"
        for index in range(labels.index(last) + 1):  # the head, then the blocks above from the top
            randomise_(parts[index][1], seed * 1009 + index)
    return randomised


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of the flattened ``x``, ties given their average rank."""
    x = x.detach().double().flatten().cpu()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.shape[0], dtype=torch.float64).index_add_(0, inverse, ranks)
    return (sums / counts)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same size; 0.0 when either is constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean SSIM of two [H, W] maps (Gaussian-weighted 11 x 11 windows, valid region only)."""
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"ssim needs two [H, W] maps of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    x = a.detach().double().cpu()[None, None]
    y = b.detach().double().cpu()[None, None]
    size = min(11, min(a.shape) - (1 - min(a.shape) % 2))
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (coords / sigma) ** 2)
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def cascading_randomization(
    backend: Backend,
    images: ImageBatch,
    texts: TextBatch,
    *,
    method: str,
    modality: Modality,
    settings: dict[str, Any] | None = None,
    maps: Sequence[torch.Tensor] | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Cascading randomisation of ``method``'s ``modality`` maps for pairs ``(images[i], texts[i])``.

    Args:
        method: a registered method name; ``settings`` its settings (the model's recommended
            ones fill in the rest, as in ``m2ib.explain``).
        maps: the trained model's maps, if already computed (else computed here).
        steps: how many cascade points to evaluate (evenly spaced, first and last included;
            default every step: head, each block, embeddings).
        seed: seeds the randomisation (the same randomised weights for every pair).

    Returns:
        ``{"labels": [S], "spearman": [N, S], "ssim": [N, S] (image side; None for text)}``.
    """
    from ..methods import REGISTRY as METHODS

    algorithm = METHODS.get(method)()
    chosen = algorithm.make_settings(backend, **(settings or {}))
    if maps is None:
        exps = algorithm.explain(backend, images, texts, chosen, (modality,))
        maps = [e.map_of(modality) for e in exps]
    labels, rho, sim = [], [], []
    for label, randomised in randomised_cascade(backend, modality, seed, steps):
        exps = algorithm.explain(randomised, images, texts, chosen, (modality,))
        new = [e.map_of(modality) for e in exps]
        labels.append(label)
        rho.append([spearman(a, b) for a, b in zip(maps, new)])
        if modality == "image":
            sim.append([ssim(a.float(), b.float()) for a, b in zip(maps, new)])
    spearman_t = torch.tensor(rho, dtype=torch.float64).T.float()
    ssim_t = torch.tensor(sim, dtype=torch.float64).T.float() if modality == "image" else None
    return {"labels": labels, "spearman": spearman_t, "ssim": ssim_t}


@dataclasses.dataclass(frozen=True)
class SanitySettings(MetricSettings):
    """The sanity check's options (``m2ib evaluate --sanity-steps 4``, ``{"sanity": {"steps": 4}}``).

    Attributes:
        steps: cascade points compared, evenly spaced from the head down; default ``None``:
            every step (head, each block, embeddings), as the paper's cascade.
    """

    steps: int | None = setting(
        None, "cascade points of the sanity check, evenly spaced from the head down (default: every block)"
    )

    def validate(self) -> None:
        if self.steps is not None:
            check_positive_int(self.steps, "sanity_steps")


@register
class Sanity(Metric):
    """Cascading randomisation: mean |Spearman| and SSIM of the randomised models' maps with the
    trained model's (lower is better); the signed per-step values are kept as curves.

    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018,
    https://arxiv.org/abs/1810.03292 (cascading model-parameter randomisation). Options:
    :class:`SanitySettings`. Reads image maps [N, H, W] and text maps [T_i]; explains each pair
    again on a randomised copy of the model (the model itself is never changed).

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> rows = load_table("shapes:test:2", size=96)
        >>> run = run_evaluation(
        ...     model, rows, ["gradcam"], {"sanity": {"steps": 2}}, None, 0, tempfile.mkdtemp(),
        ...     progress=False, report=False,
        ... )
        >>> sorted(run.records[0]["metrics"])
        ['image_sanity_spearman', 'image_sanity_ssim', 'text_sanity_spearman']
    """

    name = "sanity"
    title = "Sanity: cascading randomisation (similarity to the trained model's map, mean over the cascade)"
    paper = "https://arxiv.org/abs/1810.03292"
    keys = (
        Key("image_sanity_spearman", "lower"),
        Key("image_sanity_ssim", "lower"),
        Key("text_sanity_spearman", "lower"),
    )
    Settings = SanitySettings
    settings: SanitySettings

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps: Any) -> Measured:
        """Explain each pair again at each cascade point and compare the maps with ``maps``."""
        r = cascading_randomization(
            batch.backend,
            batch.images,
            batch.texts,
            method=run.method,
            modality=modality_of(side),
            settings=run.settings,
            maps=list(maps),
            steps=self.settings.steps,
            seed=int(batch.seed),
        )
        out = Measured.empty(len(batch))
        for i in range(len(batch)):
            out.values[i][f"{side}_sanity_spearman"] = number(r["spearman"][i].abs().mean())
            out.curves[i][f"{side}_sanity_spearman"] = numbers(r["spearman"][i])
            out.curves[i]["sanity_steps_" + side] = list(r["labels"])
            if r["ssim"] is not None:
                out.values[i]["image_sanity_ssim"] = number(r["ssim"][i].mean())
                out.curves[i]["image_sanity_ssim"] = numbers(r["ssim"][i])
        return out

    def plots(self, records: Sequence[dict[str, Any]], methods: Sequence[str], canvas: PlotCanvas) -> dict[str, Path]:
        """The mean Spearman correlation of each method along the cascade, per side."""
        pairs = [r for r in records if r.get("kind") == "pair"]
        files = {}
        for side in ("image", "text"):
            key = f"{side}_sanity_spearman"
            if not any(key in r["curves"] for r in pairs):
                continue
            fig = canvas.figure((6, 4))
            ax = fig.subplots()
            labels: list[str] = []
            for m in methods:
                mine = [r for r in pairs if r["method"] == m and key in r["curves"]]
                if mine:
                    labels = mine[0]["curves"].get(f"sanity_steps_{side}", labels)
                    ax.plot(
                        range(len(labels) or len(mine[0]["curves"][key])),
                        mean_curve([r["curves"][key] for r in mine]),
                        label=canvas.label(m),
                        **canvas.style(m),
                    )
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_xlabel("randomised down to (cumulative, from the top)")
            ax.set_ylabel("Spearman with the trained model's map")
            ax.set_title(f"{side}: cascading randomisation (top down; lower is better)")
            canvas.legend(ax)
            files[f"{side}_sanity"] = canvas.save(fig, f"{side}_sanity")
        return files
