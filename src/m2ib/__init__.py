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

from .api import compare, explain, load, similarity
from .backends import Backend
from .comparison import Comparison
from .errors import InputError, M2IBError, ModelNotAvailableError
from .explanation import Explanation
from .methods import list_methods
from .models import BUILTIN_MODELS

__version__ = "0.1.0"


def list_models() -> list[str]:
    """Names of the built-in models ``m2ib.load`` accepts besides hub ids and directories."""
    return list(BUILTIN_MODELS)


__all__ = ["load", "explain", "compare", "similarity", "list_methods", "list_models", "Explanation", "Comparison",
           "Backend", "M2IBError", "InputError", "ModelNotAvailableError", "__version__"]
