"""Train a small ``transformers`` CLIPModel on the shapes world, for m2ib to explain.

    python -m m2ib.training --out models/shapes --device cuda     # the default config
    python -m m2ib.training --out /tmp/shapes-quick --quick       # a tiny run: seconds on a CPU

The loss is the pairwise sigmoid loss of SigLIP with *exact* multi-positive labels: the
pair (image i, caption j) is positive iff every object caption j names is in scene i
(:func:`~m2ib.datasets.shapes.caption_matches`), not only on the diagonal. The temperature
is CLIPModel's ``logit_scale``; a learnable logit bias lives beside the model (in the
checkpoint, not in the exported model: inference does not need it).

Batch ``k`` is a pure function of ``(config.seed, k)``: item ``j`` is scene
``split_seed("train", k * batch_size + j, base=seed)`` with its ``make_caption`` caption.
So a run resumed from ``out_dir/checkpoint.pt`` sees exactly the data (and, on a CPU, reaches
exactly the weights) of an uninterrupted one. The finished directory holds
``model.safetensors`` + ``config.json``, the tokenizer files, ``preprocessor_config.json``
and ``m2ib.json``; ``m2ib.load(out_dir)`` reads it.

Rooms: ``config`` (TrainConfig, QUICK), ``data`` (the batches), ``model`` (model, loss,
optimiser, schedule), ``state`` (the run's state and its checkpoint), ``interrupts`` (Ctrl-C),
``loop`` (train), ``export`` (the model directory) and ``cli`` (``python -m m2ib.training``).
A new TrainConfig field becomes a command-line flag by itself; what it changes goes in the
room that uses it.
"""

from __future__ import annotations

from .cli import EXIT_UNFINISHED, main
from .config import QUICK, TrainConfig
from .data import IMAGE_MEAN, IMAGE_STD, WORDS, TrainBatches, label_matrix
from .loop import train
from .model import batch_accuracy, build_model, sigmoid_loss, unit_features
from .state import CHECKPOINT

__all__ = [
    "TrainConfig",
    "QUICK",
    "WORDS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "TrainBatches",
    "label_matrix",
    "sigmoid_loss",
    "batch_accuracy",
    "build_model",
    "unit_features",
    "train",
    "main",
    "CHECKPOINT",
    "EXIT_UNFINISHED",
]
