"""Evaluation runs of attribution metrics.

Rooms: ``runner`` (the local scheduler; the run's public names), ``pairs`` (the per-batch work),
``store`` (results file, part files, resumption), ``provenance``, ``report`` and ``plots``
(summary and figures), and ``distributed`` (the Ray scheduler). The metrics themselves, and
their registry, are :mod:`m2ib.metrics`. The shapes world's model and attribution quality
measures are research code: ``benchmarks/research/shapes_quality.py``.
"""
