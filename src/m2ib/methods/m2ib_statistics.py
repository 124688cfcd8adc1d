"""Per-feature statistics of a bottleneck's input R, for M2IB's ``bottleneck="standardised"``.

IBA (Schulz, Sixt, Tombari, Landgraf, "Restricting the Flow: Information Bottlenecks for
Attribution", ICLR 2020, https://arxiv.org/abs/2001.00396) draws the bottleneck's noise and
prior from N(mu_R, sigma_R^2), with mu_R and sigma_R the mean and standard deviation of each
feature of R over a set of inputs. A feature is one (token position, channel), as IBA's is one
(channel, row, column) of a CNN feature map. The published M2IB objective uses N(0, var)
instead, so a token whose hidden state has a large norm scores high whatever the fit does.

The statistics come from a reference set the user names (a dataset spec, as ``m2ib evaluate
--data`` reads it) or from the batch's own inputs. A text position that fewer than two
reference texts reach takes the channel's statistics pooled over every valid token.
"""

from __future__ import annotations

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError

#: Floor of a feature's sd, as a share of its channel's sd pooled over tokens (and at least
#: MIN_STD): a feature that (almost) never varies, like the start token and, in a causal text
#: tower, every token of a prefix all reference texts share, would otherwise turn float rounding
#: of R - mean into a large KL. IBA floors the sd for the same reason ("dead" features).
STD_FLOOR = 0.01
MIN_STD = 1e-6


def feature_statistics(hidden: torch.Tensor, valid: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (population) per (position, channel), [length, D] each.

    ``hidden`` [M, T, D] and ``valid`` [M, T] (1 for real tokens). Positions reached by fewer
    than two inputs, and positions at or beyond T, take the pooled per-channel statistics."""
    m, t, d = hidden.shape
    w = valid.float()[..., None]  # [M, T, 1]
    count = w.sum(0)  # [T, 1]
    mean = (hidden * w).sum(0) / count.clamp_min(1)
    var = ((hidden - mean).square() * w).sum(0) / count.clamp_min(1)
    pooled_mean = (hidden * w).sum((0, 1)) / w.sum().clamp_min(1)  # [D]
    pooled_var = ((hidden - pooled_mean).square() * w).sum((0, 1)) / w.sum().clamp_min(1)
    enough = count >= 2  # [T, 1]
    mean = torch.where(enough, mean, pooled_mean)
    var = torch.where(enough, var, pooled_var)
    if length > t:
        mean = torch.cat([mean, pooled_mean.expand(length - t, d)])
        var = torch.cat([var, pooled_var.expand(length - t, d)])
    floor = (STD_FLOOR * pooled_var.sqrt()).clamp_min(MIN_STD)
    return mean[:length], torch.maximum(var[:length].sqrt(), floor)


def _valid(batch: ImageBatch | TextBatch, hidden: torch.Tensor) -> torch.Tensor:
    if isinstance(batch, TextBatch):
        return batch.attention_mask.to(hidden.device)
    return torch.ones(hidden.shape[:2], device=hidden.device)


def reference_batch(backend: Backend, modality: Modality, spec: str) -> ImageBatch | TextBatch:
    """The image or text side of the dataset ``spec`` (a TSV/CSV file or ``shapes:SPLIT:N``)."""
    from ..datasets.tables import load_table
    from ..inputs import load_image

    size = int(backend.geometry.image_size[0])
    try:
        rows = load_table(spec, size=size).rows
    except ValueError as error:  # e.g. shapes scenes at a size the shapes world cannot render
        raise InputError(f"reference={spec!r}: {error}") from None
    if len(rows) < 2:
        raise InputError(f"reference={spec!r} has {len(rows)} row(s): the statistics need 2 or more")
    if modality == "text":
        return backend.tokenize([row.text for row in rows])
    return backend.preprocess_images([load_image(row.image)[0] for row in rows])


def bottleneck_statistics(
    backend: Backend,
    modality: Modality,
    batch: ImageBatch | TextBatch,
    layer: int,
    hidden: torch.Tensor,
    reference: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, sd) [T, D] of R at ``layer`` for a batch whose R is ``hidden`` [N, T, D]: from the
    ``reference`` dataset's inputs, or, with ``reference=None``, from the batch's own."""
    if reference is None:
        if hidden.shape[0] < 2:
            raise InputError(
                "bottleneck=standardised with the batch's own statistics needs 2 or more pairs in a "
                "batch: give reference (e.g. shapes:val:64 or a pairs file)",
                settings=("reference",),
            )
        return feature_statistics(hidden, _valid(batch, hidden), hidden.shape[1])
    ref = reference_batch(backend, modality, reference).to(backend.device)
    with torch.no_grad():
        ref_hidden = backend.prefix(modality, ref, layer).float()
    return feature_statistics(ref_hidden, _valid(ref, ref_hidden), hidden.shape[1])
