"""A plain count of a whole-image view's tokens over a fine grid of tiles (Idefics3's global image,
InternVL's thumbnail), for the tests of ``Query.spread``: no code of the package."""

from __future__ import annotations

import torch


def lattice_spread(tiles: tuple[int, int], tile: int, n: int, block: int | None = None, step: int = 4) -> torch.Tensor:
    """[n * n, (R n) * (C n)]: points on a ``step``-per-pixel lattice over the display (the R x C tiles of
    ``tile`` px stitched), each in the tile cell whose ``block`` px square of its tile holds it and in the
    whole-image token whose square of the ``tile`` px whole image (the display shrunk R times down, C times
    across) holds it (none past ``n * block`` px: unread); a token's share of a cell is the fraction of its
    points there."""
    rows, cols = tiles
    block = block or tile // n
    places = []
    for count in tiles:
        at = (torch.arange(count * tile * step, dtype=torch.float64) + 0.5) / step  # display px along the axis
        inside = at % tile // block
        cell = torch.where(inside < n, (at // tile) * n + inside, -1)
        token = (at / count) // block  # the same point in the whole image, ``tile`` px a side
        places.append((cell.long(), torch.where(token < n, token, -1).long()))
    (row, a), (col, b) = places
    token = torch.where((a[:, None] >= 0) & (b[None, :] >= 0), a[:, None] * n + b[None, :], -1).flatten()
    cell = torch.where((row[:, None] >= 0) & (col[None, :] >= 0), row[:, None] * (cols * n) + col[None, :], -1)
    cell = cell.flatten()
    per_token = torch.bincount(token[token >= 0], minlength=n * n).double()
    hit = (token >= 0) & (cell >= 0)
    counts = torch.zeros(n * n, rows * n * cols * n, dtype=torch.float64)
    counts.index_put_((token[hit], cell[hit]), torch.ones(int(hit.sum()), dtype=torch.float64), accumulate=True)
    return (counts / per_token[:, None]).float()
