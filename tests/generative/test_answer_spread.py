"""RISE and occlusion over tokens that cover several cells (``Query.spread``: LLaVA-NeXT's base image), on
the tiny LLaVA-NeXT's 24 x 40 layout (a 4 x 8 grid; 16 base tokens, then 4 rows of 8 tile tokens and a
newline), each against a plain enumeration of the masked copies the language model is given; and, without
spread, exactly the cells-only rule."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from tiny_llava import tiny_llava
from tiny_llava_next import tiny_llava_next

from m2ib.generative import generative_backend
from m2ib.generative.methods import answer_method
from m2ib.generative.methods.occlusion import occlusion_windows
from m2ib.generative.methods.rise import token_masks
from m2ib.methods.rise import MaskSampler

PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"
BASE = 16  # the base image's tokens, first in the sequence


def picture(shape):
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(*shape, 3, generator=g) * 255).byte().numpy())


def recording(model, processor):
    """A backend that keeps every batch of states ``rest`` is given, and what it answers."""
    seen = []

    class Recording(type(generative_backend(model, processor))):
        def rest(self, query, states):
            value = super().rest(query, states)
            seen.append((states.detach().clone(), value.detach().clone()))
            return value

    return Recording(model, processor), seen


@pytest.fixture(scope="module")
def next_query():
    model, processor = tiny_llava_next(seed=0)
    backend, seen = recording(model, processor)
    query = backend.prepare(picture((24, 40)), PROMPT, ANSWER)
    assert query.spread is not None and query.grid == (4, 8)
    return backend, seen, query


def run(backend, seen, query, name, **settings):
    seen.clear()
    method = answer_method(name)
    scores = method.explain(backend, query, method.make_settings(**settings)).scores
    (states, full), *copies = seen
    return scores, states[0], full[0], torch.cat([z for z, _ in copies]), torch.cat([v for _, v in copies])


def test_rise_masks_a_spread_token_by_the_mean_of_its_cells_weighted_by_its_shares(next_query):
    backend, seen, query = next_query
    scores, states, full, copies, values = run(backend, seen, query, "rise", masks=5, grid=2, seed=7, max_batch=2)
    kept = (copies * states).sum(-1) / states.square().sum(-1)  # [5, K]: each token's m (baseline zeros)
    grids = MaskSampler(5, 2, 0.5, query.grid, 7, torch.device("cpu"))(0, 5).flatten(1)  # [5, 32]
    spread = query.spread.to_dense()
    expected = torch.ones(5, query.cells.numel())
    for k, cell in enumerate(query.cells.tolist()):
        if cell >= 0:
            expected[:, k] = grids[:, cell]
        elif spread[k].any():  # a base token: its cells' values weighted by its shares
            expected[:, k] = sum(w * grids[:, c] for c, w in enumerate(spread[k].tolist()) if w) / spread[k].sum()
    assert (expected[:, :BASE].std(0) > 0).any()  # the base tokens' masks vary (not all kept)
    torch.testing.assert_close(kept, expected, rtol=1e-5, atol=1e-5)
    f = (values.double() - full).exp().float()
    reached = (query.cells >= 0) | spread.any(1)
    torch.testing.assert_close(scores, torch.where(reached, f @ expected / (5 * 0.5), 0.0), rtol=1e-4, atol=1e-6)
    assert (scores[:BASE] != 0).all() and (scores[~reached] == 0).all()


@pytest.mark.parametrize("window", [1, 2])
def test_occlusion_hides_every_token_with_a_share_in_the_square(next_query, window):
    backend, seen, query = next_query
    scores, states, full, copies, values = run(backend, seen, query, "occlusion", window=window, max_batch=4)
    hidden = copies.norm(dim=-1) == 0  # [W, K]: tokens at the zeros baseline
    spread = query.spread.to_dense()
    cells = query.cells.tolist()
    expected = []
    for i in range(4 - window + 1):
        for j in range(8 - window + 1):
            square = {r * 8 + c for r in range(i, i + window) for c in range(j, j + window)}
            expected.append([cell in square or any(spread[k, s] > 0 for s in square) for k, cell in enumerate(cells)])
    for k, cell in enumerate(cells):
        if cell < 0 and not spread[k].any():  # a newline: alone
            expected.append([m == k for m in range(len(cells))])
    assert hidden.tolist() == expected
    drops = full - values
    for k in range(BASE):  # a base token: the mean drop of the squares that hide it
        torch.testing.assert_close(scores[k], drops[hidden[:, k]].mean(), rtol=1e-5, atol=1e-7)
    assert hidden[:, :BASE].sum(0).min() > 1  # each hidden by several squares, not alone


def test_without_spread_the_masks_and_squares_are_the_cells_alone(next_query):
    """Plain LLaVA (every token one cell) and LLaVA-NeXT with its spread dropped: RISE's masks are the cells'
    values (1 for no cell) and occlusion's squares their cells' tokens, no-cell tokens alone: exactly."""
    _, _, next_q = next_query
    model, processor = tiny_llava(seed=0)
    plain = generative_backend(model, processor).prepare(picture((8, 8)), PROMPT, ANSWER)
    for query in (plain, dataclasses.replace(next_q, spread=None)):
        assert query.spread is None
        rows, cols = query.grid
        sampler = MaskSampler(6, 2, 0.5, query.grid, 3, torch.device("cpu"))
        grids = sampler(0, 6).flatten(1)
        expected = torch.stack([grids[:, c] if c >= 0 else torch.ones(6) for c in query.cells.tolist()], 1)
        assert torch.equal(token_masks(sampler, 0, 6, query.cells), expected)
        squares = [
            [c >= 0 and i <= c // cols < i + 2 and j <= c % cols < j + 2 for c in query.cells.tolist()]
            for i in range(rows - 1)
            for j in range(cols - 1)
        ]
        lone = [[m == k for m in range(query.cells.numel())] for k, c in enumerate(query.cells.tolist()) if c < 0]
        assert occlusion_windows(query.cells, query.grid, 2).tolist() == squares + lone
