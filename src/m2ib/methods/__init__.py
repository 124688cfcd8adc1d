"""Attribution methods behind one interface; importing this module fills the registry.

The import order is the registry's order (M2IB first, then the baselines in the order of
the paper's comparison and the newer methods); ``m2ib.list_methods()`` and the CLI's
``--method`` choices read it.
"""

# The import order below is the registry's order; isort must not sort it.
# isort: off
from .base import REGISTRY, Method, RawScores, Settings, Target, register
from .layered import LayerMethod, LayerSettings, default_layer
from .m2ib import M2IB, M2IBSettings
from .gradcam import GradCAM
from .saliency import Saliency
from .rise import RISE
from .kernelshap import KernelSHAP
from .chefer import Chefer
from .rollout import Rollout
from .nib import NIB
from .gradeclip import GradECLIP
from .legrad import LeGrad

# isort: on

__all__ = [
    "REGISTRY",
    "Method",
    "RawScores",
    "Settings",
    "Target",
    "register",
    "LayerMethod",
    "LayerSettings",
    "M2IB",
    "M2IBSettings",
    "default_layer",
    "list_methods",
    "GradCAM",
    "Saliency",
    "RISE",
    "KernelSHAP",
    "Chefer",
    "Rollout",
    "NIB",
    "GradECLIP",
    "LeGrad",
]


def list_methods() -> list[str]:
    """Names of the registered methods, M2IB first (plugins' methods included).

    Each method's paper is in its module's docstring and in ``m2ib list``.

    Examples:
        >>> import m2ib
        >>> m2ib.list_methods()[:3]
        ['m2ib', 'gradcam', 'saliency']
    """
    return list(REGISTRY.names())
