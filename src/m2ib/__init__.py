"""m2ib: see why a CLIP-style model matches an image with a text.

Multi-modal information bottleneck attribution (M2IB, NeurIPS 2023) and baselines for
image-text models, with a Python API, a CLI and figures.

    import m2ib
    model = m2ib.load("shapes")
    exp = m2ib.explain(model, "scene.png", "a red circle")
    exp.image_map, exp.text_map, exp.tokens
    exp.save("out/")
    m2ib.compare(model, "scene.png", "a red circle", methods="m2ib,gradcam").save("out/", "scene")
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import InputError, M2IBError, ModelNotAvailableError
from .version import __version__

# Public names, imported on first use: `m2ib --help` and argument errors then answer without
# importing torch (1.5 s) or transformers (several seconds).
_LAZY = {
    "load": "api",
    "explain": "api",
    "compare": "api",
    "similarity": "api",
    "Backend": "backends",
    "Comparison": "comparison",
    "Explanation": "explanation",
    "list_methods": "methods",
    "BUILTIN_MODELS": "models",
    "audit": "auditing",
    "explain_answer": "generative",
}

if TYPE_CHECKING:
    from .api import compare, explain, load, similarity
    from .auditing import audit
    from .backends import Backend
    from .comparison import Comparison
    from .explanation import Explanation
    from .generative import explain_answer
    from .methods import list_methods
    from .models import BUILTIN_MODELS


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'm2ib' has no attribute {name!r}")


def list_models(generative: bool = False) -> list[str]:
    """Names of the built-in models ``m2ib.load`` accepts besides hub ids and directories (with
    ``generative``: those ``m2ib.explain_answer`` accepts).

    Examples:
        >>> import m2ib
        >>> m2ib.list_models()
        ['shapes', 'random-tiny', 'random-vit-b-32']
        >>> m2ib.list_models(generative=True)
        ['shapes-vqa']
    """
    from .models import builtin_names

    return builtin_names(generative)


__all__ = [
    "load",
    "explain",
    "compare",
    "similarity",
    "explain_answer",
    "audit",
    "list_methods",
    "list_models",
    "Explanation",
    "Comparison",
    "Backend",
    "BUILTIN_MODELS",
    "M2IBError",
    "InputError",
    "ModelNotAvailableError",
    "__version__",
]
