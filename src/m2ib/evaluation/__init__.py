"""Evaluation runs of attribution metrics, and of models and attributions on the shapes world.

Rooms: ``runner`` (the local scheduler; the run's public names), ``pairs`` (the per-batch work),
``store`` (results file, part files, resumption), ``provenance``, ``report`` and ``plots``
(summary and figures), ``distributed`` (the Ray scheduler), and ``shapes_quality`` (with
``shapes_pairs``, ``shapes_model``, ``shapes_attribution``). The metrics themselves, and
their registry, are :mod:`m2ib.metrics`.
"""
