"""Small helpers shared by the baseline methods (positions, masks, layers, chunks).

Nothing here touches a model directly: everything goes through the backend interface.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..settings import check_layer, check_positive_int  # noqa: F401  (the methods' shared checks)

S = TypeVar("S")
V = TypeVar("V")


class PerBackend(Generic[V]):
    """What a method keeps for one backend object (e.g. M2IB's captured CUDA graphs).

    Keyed by the backend's identity and dropped when the backend is collected, so backends know
    nothing of methods, and a copy of a backend (``dataclasses.replace``: the sanity check's
    randomised model, a reduced-precision copy) starts with nothing of the original's. A value must
    not hold its backend strongly (that would keep the backend alive): hold a ``weakref`` instead.
    """

    def __init__(self, factory: Callable[[], V]) -> None:
        self._factory = factory
        self._values: dict[int, V] = {}

    def __call__(self, backend: Backend) -> V:
        key = id(backend)
        if key not in self._values:
            self._values[key] = self._factory()
            weakref.finalize(backend, self._values.pop, key, None)
        return self._values[key]

    def __len__(self) -> int:
        """How many live backends have a value."""
        return len(self._values)


def pooled_positions(backend: Backend, modality: Modality, batch: ImageBatch | TextBatch) -> torch.Tensor | None:
    """Index [N] of the token whose final state becomes the embedding (the class token, the
    end-of-text token, SigLIP's last text position), or ``None`` when the tower's head reads every
    token (average or attention pooling). The backend answers from the rule its head pools by."""
    return backend.pooled_positions(modality, batch)


def pooled_row(matrix: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Row ``positions[n]`` of each [N, T, S] matrix -> [N, S]; the mean over the rows when
    ``positions`` is None (a head that reads every token)."""
    if positions is None:
        return matrix.mean(1)
    return matrix[torch.arange(matrix.shape[0], device=matrix.device), positions.to(matrix.device)]


def token_mask(modality: Modality, batch: ImageBatch | TextBatch, tokens: int, device: torch.device) -> torch.Tensor:
    """[N, T] 1.0 for real tokens (every image token; texts: not padding), else 0.0."""
    if modality == "image":
        return torch.ones(len(batch), tokens, device=device)
    if not isinstance(batch, TextBatch):
        raise TypeError(f"the text side's batch is a {type(batch).__name__}, not a TextBatch")
    return batch.attention_mask.to(device).float()


def require_attention(backend: Backend, method: str) -> None:
    if not backend.supports_attention:
        raise InputError(
            f"{method} needs the attention weights, which the {type(backend).__name__} backend cannot record"
        )


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def recorded_forward(
    backend: Backend, modality: Modality, batch: ImageBatch | TextBatch, grad: bool = True
) -> tuple[torch.Tensor, list]:
    """Embed ``batch`` while recording every block's attention: (embeddings [N, E], records).

    With ``grad`` the input of block 0 requires grad, so every recorded tensor is in the
    autograd graph (the weights stay frozen); without it nothing is.
    """
    from ..backends.base import EMBEDDINGS

    with torch.no_grad():
        embedded = backend.prefix(modality, batch, EMBEDDINGS)
    embedded = embedded.detach().requires_grad_(grad)
    with torch.set_grad_enabled(grad), backend.record_attention(modality) as records:
        embedding = backend.suffix(modality, embedded, EMBEDDINGS, batch)
    return embedding, list(records)


def pooled_rows(tensor: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """``tensor[n, :, positions[n], :]`` for [N, H, T, S] (per-head query rows) -> [N, H, S];
    the sum over the rows when ``positions`` is None (every token reaches the head)."""
    if positions is None:
        return tensor.sum(2)
    n, h, _, s = tensor.shape
    index = positions.to(tensor.device).view(n, 1, 1, 1).expand(n, h, 1, s)
    return tensor.gather(2, index)[:, :, 0]
