"""Attribution methods behind one interface; importing this module fills the registry."""

from .base import REGISTRY, Method, RawScores, Settings, get_method, register
from .m2ib import M2IB, M2IBSettings, default_layer

__all__ = ["REGISTRY", "Method", "RawScores", "Settings", "get_method", "register", "M2IB", "M2IBSettings",
           "default_layer", "list_methods"]


def list_methods() -> list[str]:
    """Names of the registered methods, M2IB first."""
    return list(REGISTRY)
