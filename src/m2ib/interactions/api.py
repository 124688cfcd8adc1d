"""``m2ib.interactions.interact``: one image-text pair -> an Interaction, from paths or pictures."""

from __future__ import annotations

from typing import Any

from .base import REGISTRY as INTERACTIONS
from .result import Interaction


def interact(
    model: Any, image: Any, text: str, *, method: str = "exclip", device: str | None = None, **settings: Any
) -> Interaction:
    """Token x patch interaction scores of one pair.

    Args:
        model: what :func:`m2ib.load` accepts (a loaded backend is fastest for repeated calls).
        image: a file path, PIL image or unnormalised tensor [3, H, W] in [0, 1].
        text: the caption.
        method: a name from ``m2ib.interactions.REGISTRY.names()``.
        device: device for a model given by name.
        **settings: the method's settings (e.g. exCLIP's ``text_layer``, ``steps``).

    Returns:
        An :class:`~m2ib.interactions.result.Interaction`: ``matrix`` [T, rows, cols], ``span_map``
        of a phrase [H, W], ``region_scores`` of a box [T].

    Examples:
        >>> from m2ib.interactions import interact
        >>> pair = interact("shapes", "examples/scene3.png", "an orange triangle", method="exclip")
        >>> pair.tokens
        ['<|startoftext|>', 'an', 'orange', 'triangle', '<|endoftext|>']
    """
    from ..api import load
    from ..inputs import check_texts, load_image

    algorithm = INTERACTIONS.get(method)()
    chosen = algorithm.make_settings(**settings)
    check_texts([text])
    backend = load(model, device=device)
    picture, source = load_image(image)
    return algorithm.interact(backend, backend.preprocess_images([picture], [source]), backend.tokenize([text]), chosen)
