"""train(): build or resume a run, step it with checkpoints and clean Ctrl-C stops, export the model.

Batch ``k`` is a pure function of ``(config.seed, k)`` (see :mod:`.data`), so a run resumed from
``out_dir/checkpoint.pt`` sees exactly the data (and, on a CPU, reaches exactly the weights) of
an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..errors import InputError
from ..fileio import atomic_write
from .config import TrainConfig
from .data import TrainBatches
from .export import export_model
from .interrupts import DeferInterrupt, ignore_sigint
from .model import MAX_LOGIT_SCALE, forward_backward
from .state import CHECKPOINT, RunState, checkpoint_state, new_run, resume as resume_run


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    command: str | None = None,
    keep_checkpoint: bool = False,
    stop_after: int | None = None,
    time_limit: float | None = None,
) -> Path:
    """Train a CLIPModel on the shapes world and save it, loadable by ``m2ib.load(out_dir)``.

    Args:
        config: the run (see :class:`TrainConfig`; :data:`QUICK` is a tiny one).
        out_dir: where the model goes; ``out_dir/checkpoint.pt`` is written every
            ``config.checkpoint_every`` steps, at the end and on Ctrl-C (then re-raised).
        device: ``"cpu"``, ``"cuda"``, ...
        resume: continue from ``out_dir/checkpoint.pt`` when there is one (its config must
            equal ``config`` up to ``workers`` and ``checkpoint_every``); False starts over.
        progress: show a progress bar with the loss and the in-batch accuracy.
        command: recorded in ``m2ib.json`` (default: this process's command line).
        keep_checkpoint: keep ``checkpoint.pt`` after the final save (default: delete it, the
            shipped directory holds only the model).
        stop_after: stop once this many steps (in all, resumed ones included) are done, saving
            the checkpoint but not the model, as if interrupted (for runs in parts).
        time_limit: likewise, stop after this many seconds of this call's training loop.

    Returns:
        ``out_dir``. The model files are there once all ``config.steps`` are done.
    """
    dev = resolve_device(device)
    amp = dev.type == "cuda" if config.amp is None else bool(config.amp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT

    run = new_run(config, dev)
    if resume and ckpt_path.exists():
        resume_run(run, ckpt_path)
    limit = config.steps if stop_after is None else max(run.step, min(config.steps, int(stop_after)))
    _Steps(run, ckpt_path, dev, amp).train_until(limit, time_limit, progress)

    if run.step < config.steps:
        if progress:
            print(
                f"stopped at step {run.step}/{config.steps}; checkpoint saved in {ckpt_path}: run again to resume",
                file=sys.stderr,
            )
        return out_dir
    export_model(run, out_dir, dev, amp, command)
    if not keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return out_dir


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; InputError when it is malformed or its CUDA is missing."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"device={device!r}: use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r}: CUDA is not available here; use --device cpu")
    return dev


def _loader(config: TrainConfig, start: int, dev: torch.device) -> torch.utils.data.DataLoader:
    """The batches of steps ``start``, ``start + 1``, ..., made in ``config.workers`` processes."""
    workers = config.workers
    return torch.utils.data.DataLoader(
        TrainBatches(config),
        batch_size=None,
        sampler=range(start, config.steps),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=ignore_sigint if workers > 0 else None,
    )


class _Steps:
    """The training loop of one ``train`` call, with what it must know to save on any stop."""

    def __init__(self, run: RunState, ckpt_path: Path, dev: torch.device, amp: bool):
        self.run, self.ckpt_path, self.dev, self.amp = run, ckpt_path, dev, amp
        self.params = run.parameters
        self.saved_step: int | None = None  # the step of the checkpoint on disk, once this call wrote one
        self.updating = False  # inside the optimiser update: a checkpoint now would be torn
        self.start = 0.0  # perf_counter() when the loop started

    def train_until(self, limit: int, time_limit: float | None, progress: bool) -> None:
        """Train up to ``limit`` steps in all (fewer when ``time_limit`` seconds run out), saving the
        checkpoint every ``checkpoint_every`` steps and at the stop. A first Ctrl-C finishes the
        step, saves and raises KeyboardInterrupt; a second one raises at once."""
        from tqdm.auto import tqdm

        run, config = self.run, self.run.config
        loader = _loader(config, run.step, self.dev)
        bar = tqdm(
            total=config.steps, initial=run.step, disable=not progress, desc="training", unit="step", dynamic_ncols=True
        )
        self.start = time.perf_counter()
        interrupt = DeferInterrupt()
        try:
            with interrupt:
                try:
                    for batch in loader if run.step < limit else ():
                        self._step(batch)
                        _show(bar, run.history)
                        out_of_time = time_limit is not None and time.perf_counter() - self.start >= time_limit
                        if (
                            run.step % config.checkpoint_every == 0
                            or run.step >= limit
                            or out_of_time
                            or interrupt.requested
                        ):
                            self.save_checkpoint()
                        if interrupt.requested:
                            raise KeyboardInterrupt
                        if run.step >= limit or out_of_time:
                            break
                except Exception:
                    if interrupt.requested:  # e.g. a DataLoader worker stopped by the same Ctrl-C
                        raise KeyboardInterrupt from None
                    raise
        except KeyboardInterrupt:
            self._interrupted(bar)
            raise
        finally:
            bar.close()
            run.wall += time.perf_counter() - self.start
            del loader  # stops the workers

    def _step(self, batch: dict) -> None:
        """One optimiser step on ``batch``, its [loss, accuracy] appended to the history."""
        run = self.run
        if int(batch["step"]) != run.step:  # cannot happen: the sampler runs step, step + 1, ...
            raise RuntimeError(f"data loader gave step {int(batch['step'])}, expected {run.step}")
        loss, accuracy = forward_backward(run.model, run.logit_bias, batch, self.dev, self.amp)
        if run.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, run.config.grad_clip)
        self.updating = True  # a second Ctrl-C from here to `updating = False` tears the state
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            run.model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
        run.step += 1
        self.updating = False
        run.history.append([loss, accuracy])

    def save_checkpoint(self) -> None:
        state = checkpoint_state(self.run, self.run.wall + (time.perf_counter() - self.start))
        atomic_write(self.ckpt_path, lambda f: torch.save(state, f))
        self.saved_step = self.run.step

    def _interrupted(self, bar) -> None:
        """After Ctrl-C: save unless the update was torn or the checkpoint is current, and say so."""
        step = self.run.step
        if not self.updating and self.saved_step != step:
            self.save_checkpoint()
        bar.close()
        where = (
            f"checkpoint saved in {self.ckpt_path}"
            if not self.updating
            else f"the last checkpoint in {self.ckpt_path} stays"
        )
        print(
            f"interrupted at step {step}/{self.run.config.steps}; {where}: run the same command again to resume",
            file=sys.stderr,
        )


def _show(bar, history: list[list[float]]) -> None:
    """Advance the progress bar, showing the loss and accuracy averaged over the last 20 steps."""
    recent = history[-20:]
    bar.update(1)
    bar.set_postfix(
        loss=f"{sum(h[0] for h in recent) / len(recent):.4f}",
        acc=f"{sum(h[1] for h in recent) / len(recent):.3f}",
        refresh=False,
    )
