"""The package version (a leaf module: provenance records read it without importing the package)."""

__version__ = "0.1.0"
