"""Evaluation of models and attributions (e.g. on the shapes world: ``m2ib.evaluation.shapes_quality``)."""
