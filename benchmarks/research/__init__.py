"""Research code the benchmarks share, kept out of the installed package: the shapes world's quality
measures (``shapes_quality``, with ``shapes_pairs``, ``shapes_model``, ``shapes_attribution``) and
the planted-shortcut recipes (``shortcut``), their fine-tune and shipped deltas (``planted``,
``planted/*.safetensors``).

Importable as ``research`` with ``benchmarks/`` on the path: a script run as
``python benchmarks/NAME.py`` has it; the tests add it in ``tests/conftest.py``.
"""
