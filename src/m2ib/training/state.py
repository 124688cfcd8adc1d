"""The state of a training run, what ``out_dir/checkpoint.pt`` holds, and resuming from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..errors import InputError
from ..tokenizer import build_word_tokenizer
from .config import TrainConfig, config_dict, config_differences
from .data import WORDS
from .model import build_model, lr_schedule, make_optimizer

if TYPE_CHECKING:
    from transformers import CLIPModel

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunState:
    """Everything a checkpoint restores: the model, the logit bias, the optimiser and schedule,
    the steps done, the training seconds spent and ``history`` ([loss, batch accuracy] per step)."""

    config: TrainConfig
    model: CLIPModel
    logit_bias: torch.nn.Parameter
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    wall: float = 0.0
    history: list[list[float]] = field(default_factory=list)

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        """What the gradient clipping sees: the model's parameters and the logit bias."""
        return list(self.model.parameters()) + [self.logit_bias]


def new_run(config: TrainConfig, dev: torch.device) -> RunState:
    """A fresh run at step 0 on ``dev`` (the model deterministic from ``config.seed``)."""
    model = build_model(config, build_word_tokenizer(WORDS))
    # In place, as Module.to is; the cast because transformers' @wraps(Module.to) types ``to`` unbound.
    cast(torch.nn.Module, model).to(dev).train()
    logit_bias = torch.nn.Parameter(torch.tensor(float(config.logit_bias_init), device=dev))
    optimizer = make_optimizer(model, logit_bias, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config.warmup_steps, config.steps))
    return RunState(config, model, logit_bias, optimizer, scheduler)


def checkpoint_state(run: RunState, wall_seconds: float) -> dict[str, Any]:
    """The checkpoint of ``run`` (format 1), ``wall_seconds`` of training so far."""
    return {
        "model": run.model.state_dict(),
        "logit_bias": run.logit_bias.detach(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "step": run.step,
        "config": config_dict(run.config),
        "wall_seconds": wall_seconds,
        "history": run.history,
        "format": 1,
    }


def resume(run: RunState, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``run``; InputError when it was made with another config."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    diffs = config_differences(ckpt["config"], run.config)
    if diffs:
        raise InputError(
            f"{path} was made with another config ({'; '.join(diffs)}): use the same "
            "settings, --no-resume to start over, or another --out"
        )
    run.model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        run.logit_bias.copy_(ckpt["logit_bias"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.step, run.wall = int(ckpt["step"]), float(ckpt["wall_seconds"])
    run.history = [list(h) for h in ckpt["history"]]


def checkpoint_step(out_dir: str | Path) -> int | None:
    """The step a checkpoint in ``out_dir`` was written at, or None when there is none."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
