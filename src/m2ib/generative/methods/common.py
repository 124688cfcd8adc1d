"""The gradient of the answer's log-likelihood with respect to the image-token states, shared by
gradient saliency and input x gradient."""

from __future__ import annotations

import torch

from ..base import GenerativeBackend, Query
from .base import plain_states


def state_gradient(backend: GenerativeBackend, query: Query) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(states [K, D], d logL / d states [K, D], logL): one forward and one backward of ``rest``."""
    states = plain_states(backend, query).requires_grad_(True)
    value = backend.rest(query, states)
    (grad,) = torch.autograd.grad(value.sum(), states)
    return states.detach()[0], grad.float()[0], float(value.detach()[0])
