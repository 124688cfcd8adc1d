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


def check_whole_image_spread(backend, picture, prompt: str, answer: str) -> None:
    """The whole-image view's 16 tokens (the last of 112) over the 8 x 12 grid of the tests' tiled
    configs: equal to :func:`lattice_spread` to 1e-3; tile tokens spread nowhere; one whole-image
    token's score is drawn on exactly its 2 x 3 block of cells."""
    from m2ib.generative.m2ib import grid_scores

    query = backend.prepare(picture, prompt, answer)
    spread = query.spread.to_dense()
    assert spread.shape == (112, 96) and not spread[:96].any() and (query.cells[96:] == -1).all()
    torch.testing.assert_close(spread[96:], lattice_spread((2, 3), 16, 4), rtol=0, atol=1e-3)
    scores = torch.zeros(112)
    scores[96 + 1 * 4 + 2] = 2.0  # token (1, 2): rows 2-3, columns 6-8
    shown = grid_scores(scores, query.cells, query.grid, query.spread)
    assert shown.nonzero().tolist() == [[r, c] for r in (2, 3) for c in (6, 7, 8)]
    torch.testing.assert_close(shown.sum(), torch.tensor(2.0))


def check_fit_finds_the_whole_image_token(backend_class, model, processor, picture, prompt: str, answer: str) -> None:
    """A planted signal: a likelihood that reads only whole-image token (1, 2) must give it the largest
    KL by far and put the map's peak on its 2 x 3 block of cells (rows 2-3, columns 6-8 of 8 x 12)."""
    from m2ib.generative import AnswerM2IBSettings, fit_answer

    g = torch.Generator().manual_seed(0)
    states = torch.randn(1, 112, 32, generator=g)
    states = 3.0 * states / states.norm(dim=-1, keepdim=True)
    read = 96 + 1 * 4 + 2

    class ReadsOneToken(backend_class):
        def image_states(self, query):
            return states.clone()

        def rest(self, query, z):
            return -10.0 * (z[:, read] - states[:, read]).square().sum(-1)

    backend = ReadsOneToken(model, processor)
    fit = fit_answer(backend, backend.prepare(picture, prompt, answer), AnswerM2IBSettings(steps=10, samples=4))
    others = torch.cat([fit.token_scores[:read], fit.token_scores[read + 1 :]])
    assert int(fit.token_scores.argmax()) == read and fit.token_scores[read] > 100 * others.max()
    block = torch.zeros(8, 12, dtype=torch.bool)
    block[2:4, 6:9] = True
    assert fit.grid_map[block].min() > 10 * fit.grid_map[~block].max()
