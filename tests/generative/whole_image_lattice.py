"""A plain count of a whole-image view's tokens over a fine grid of tiles (Idefics3's global image,
InternVL's thumbnail), for the tests of ``Query.spread``: no code of the package."""

from __future__ import annotations

import torch


def lattice_spread(tiles: tuple[int, int], tile: int, n: int, step: int = 4) -> torch.Tensor:
    """[n * n, (R n) * (C n)]: points on a ``step``-per-pixel lattice over the display (the R x C tiles of
    ``tile`` px stitched), each in the tile cell whose ``tile / n`` px block holds it and in the whole-image
    token whose block of the ``tile`` px whole image (the display shrunk R times down, C times across) holds
    it; a token's share of a cell is the fraction of its points there."""
    rows, cols = tiles
    block = tile // n  # px a token reads a side (in a tile and in the whole image alike)
    places = []
    for count in (rows, cols):
        at = (torch.arange(count * tile * step, dtype=torch.float64) + 0.5) / step  # display px along the axis
        cell = (at // tile) * n + (at % tile) // block
        token = (at / count) // block  # the same point in the whole image, ``tile`` px a side
        places.append((cell.long(), token.long()))
    (row, a), (col, b) = places
    token = (a[:, None] * n + b[None, :]).flatten()
    cell = (row[:, None] * (cols * n) + col[None, :]).flatten()
    counts = torch.zeros(n * n, rows * n * cols * n, dtype=torch.float64)
    counts.index_put_((token, cell), torch.ones(token.numel(), dtype=torch.float64), accumulate=True)
    return (counts / counts.sum(1, keepdim=True)).float()
