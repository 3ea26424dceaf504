"""The training loop: AdamW, warmup then cosine, label smoothing, gradient accumulation,
autocast on CUDA, validation every epoch with early stopping, and a checkpoint every epoch
from which a killed run resumes to the same weights it would have reached uninterrupted
(on CPU, where every kernel is deterministic).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from transfer_pipe.config import FinetuneConfig, setting, settings_from
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.checkpoint import CheckpointFolder
from transfer_pipe.finetune.data import ImageRows, loader_workers, make_loader, prefetch
from transfer_pipe.finetune.surgery import FinetuneModel, parameter_groups

logger = logging.getLogger(__name__)

LAST, BEST = "last", "best"  # checkpoint names: <checkpoints>/last.safetensors, best...
_OLD_FORMAT = ("last.pt", "best.pt")  # pickles of older versions: never loaded
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """What the loop trains with: a fine-tuning run's options (``FinetuneConfig``, their one
    home, whose defaults these are; ``from_config``) and what they resolve to."""

    epochs: int = setting(FinetuneConfig, "epochs")
    batch_size: int = setting(FinetuneConfig, "batch_size")
    accumulate: int = setting(FinetuneConfig, "accumulate")
    lr: float = setting(FinetuneConfig, "lr")
    head_lr: float
    lr_decay: float = setting(FinetuneConfig, "lr_decay")
    weight_decay: float = setting(FinetuneConfig, "weight_decay")
    warmup_epochs: float = setting(FinetuneConfig, "warmup_epochs")
    label_smoothing: float = setting(FinetuneConfig, "label_smoothing")
    patience: int = setting(FinetuneConfig, "patience")
    seed: int = setting(FinetuneConfig, "seed")
    autocast: str = setting(FinetuneConfig, "autocast")  # CUDA only
    time_budget_s: float | None = setting(FinetuneConfig, "time_budget_s")
    loader_workers: int = 0  # DataLoader processes; 0: the rows' decode threads

    @classmethod
    def from_config(cls, config: FinetuneConfig) -> Self:
        """The options ``config`` trains with (its options as given: see
        ``FinetuneConfig.as_trained`` for what random init changes)."""
        return settings_from(
            cls,
            config,
            # A new head starts far from any solution and may move fast; a probe's head is
            # already fitted and moves with the backbone.
            head_lr=config.lr if config.lp_ft else 10 * config.lr,
            loader_workers=loader_workers(config.loader_workers),
        )

    def computed(self) -> dict[str, Any]:
        """The options that decide what is computed, as a run's id records them: how long
        (the time budget) and how fast (loader processes) left at none and 0."""
        return asdict(replace(self, time_budget_s=None, loader_workers=0))


@dataclass
class TrainState:
    """What a checkpoint restores besides the tensors."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_accuracy: float = -1.0
    finished: str = ""  # "" while training; else why it stopped
    failed: dict[int, str] = field(default_factory=dict)  # row -> reason, never retried
    seconds: float = 0.0
    planned_epochs: int = 0  # 0: as many as the options say; fewer to fit a time budget


def epochs_within(budget_s: float, first_epoch_s: float, epochs: int) -> int:
    """How many epochs fit a time budget, judged by the first epoch (which also pays the
    one-time costs, so the estimate errs on the short side); at least 1, at most ``epochs``."""
    if first_epoch_s <= 0:
        return epochs
    return max(1, min(epochs, int(budget_s // first_epoch_s)))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 down to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Trains ``model`` on ``train`` rows, validates on ``val`` rows after every epoch, and
    keeps two checkpoints in the folder ``checkpoints`` (a path or any fsspec URL, such as
    the run's folder in an S3 store, with ``storage_options``): ``last`` (everything needed
    to resume, on this machine or another) and ``best`` (the weights of the best validation
    epoch). See :mod:`transfer_pipe.finetune.checkpoint` for their format."""

    def __init__(
        self,
        model: FinetuneModel,
        train: ImageRows,
        val: ImageRows,
        options: TrainOptions,
        checkpoints: str | os.PathLike[str],
        device: torch.device,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        # channels_last: what the convolutions of these backbones run fastest on.
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.train_rows, self.val_rows = train, val
        self.options = options
        self.checkpoints = CheckpointFolder(os.fspath(checkpoints), storage_options)
        self.device = device
        self.optimizer = torch.optim.AdamW(
            parameter_groups(
                model, options.lr, options.lr_decay, options.weight_decay, options.head_lr
            )
        )
        micro = math.ceil(len(train) / options.batch_size)
        self.steps_per_epoch = math.ceil(micro / options.accumulate)
        total = self.steps_per_epoch * options.epochs
        self.warmup = min(total, max(1, round(options.warmup_epochs * self.steps_per_epoch)))
        self.state = TrainState()  # before the scheduler: its first call reads the plan
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
        use_fp16 = device.type == "cuda" and options.autocast == "fp16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)

    @property
    def planned_epochs(self) -> int:
        return self.state.planned_epochs or self.options.epochs

    def _factor(self, step: int) -> float:
        # Reads the plan on every step: a time budget may shorten it after the first epoch.
        return lr_factor(step, self.warmup, self.steps_per_epoch * self.planned_epochs)

    def _fit_schedule_to_budget(self) -> None:
        """After the first epoch, plan only the epochs the time budget holds, so that the
        cosine schedule ends with the budget instead of being cut off midway."""
        budget = self.options.time_budget_s
        if budget is None or self.state.planned_epochs:
            return
        self.state.planned_epochs = epochs_within(budget, self.state.seconds, self.options.epochs)
        factor = self._factor(self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * factor

    # -- checkpoints --------------------------------------------------------------------

    def save(self) -> None:
        """Write the ``last`` checkpoint whole: a kill mid-write leaves the previous one."""
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "rng": _rng_states(),
            "options": asdict(self.options),
        }
        self.checkpoints.save(LAST, payload)

    def resume(self) -> bool:
        """Load the ``last`` checkpoint if there is one; returns whether a run was resumed.
        A checkpoint that is not valid, or not this run's, raises ``CheckpointRefused``."""
        payload = self.checkpoints.load(LAST)
        if payload is None:
            _warn_of_old_checkpoints(self.checkpoints)
            return False
        try:
            self._restore(payload)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise self.checkpoints.refused(LAST, f"it does not fit this run ({exc})") from exc
        return True

    def _restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        state = dict(payload["state"])
        state["failed"] = {int(k): str(v) for k, v in state["failed"].items()}
        self.state = TrainState(**state)
        _set_rng_states(payload["rng"])

    def load_best(self) -> None:
        """Put the best validation epoch's weights into the model."""
        payload = self.checkpoints.load(BEST)
        if payload is not None:
            load_model_weights(self.model, payload, self.checkpoints)

    # -- training -----------------------------------------------------------------------

    def fit(self, on_epoch: EpochCallback | None = None) -> TrainState:
        """Train until the epochs run out, validation stops improving for ``patience``
        epochs, or the time budget is spent (the schedule is fitted to it after the first
        epoch); resumes from the ``last`` checkpoint when there is one."""
        if self.resume():
            logger.info(
                "fine-tuning resumes after epoch %d of %d (checkpoint %s)",
                self.state.epoch,
                self.planned_epochs,
                self.checkpoints.file_url(LAST),
            )
        else:
            torch.manual_seed(self.options.seed)
            self.save()  # epoch 0: a run killed in its first epoch restarts cleanly
        started = time.perf_counter() - self.state.seconds
        while not self.state.finished:
            epoch = self.state.epoch + 1
            train_metrics = self._train_epoch(epoch)
            val = self.validate()
            self.state.epoch = epoch
            self.state.seconds = time.perf_counter() - started
            record = {"epoch": epoch, **train_metrics, **val, "seconds": self.state.seconds}
            self.state.history.append(record)
            if epoch == 1:
                self._fit_schedule_to_budget()
            if val["val_accuracy"] > self.state.best_accuracy:
                self.state.best_accuracy, self.state.best_epoch = val["val_accuracy"], epoch
                self.checkpoints.save(BEST, {"model": self.model.state_dict()})
            self.state.finished = self._stop_reason(epoch)
            self.save()
            logger.info(
                "fine-tuning epoch %d of %d: train loss %.4f, val accuracy %.4f%s",
                epoch,
                self.planned_epochs,
                record.get("train_loss", math.nan),
                val["val_accuracy"],
                f"; stopping ({self.state.finished})" if self.state.finished else "",
            )
            if on_epoch is not None:
                on_epoch(record)
        self.load_best()
        logger.info(
            "fine-tuning done after %d epochs (%s); best validation accuracy %.4f at epoch %d",
            self.state.epoch,
            self.state.finished,
            self.state.best_accuracy,
            self.state.best_epoch,
        )
        return self.state

    def _stop_reason(self, epoch: int) -> str:
        options = self.options
        if epoch >= self.planned_epochs:
            return "epochs" if self.planned_epochs == options.epochs else "time budget"
        if epoch - self.state.best_epoch >= options.patience:
            return "early stopping"
        if options.time_budget_s is not None and self.state.seconds >= options.time_budget_s:
            return "time budget"
        return ""

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.device.type != "cuda" or self.options.autocast == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.options.autocast == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        options = self.options
        self.model.train()
        self.train_rows.set_epoch(epoch)
        loader = make_loader(
            self.train_rows, options.batch_size, shuffle=True, workers=options.loader_workers
        )
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(prefetch(iter(loader))):
            self.state.failed.update(dict(batch.failed))
            if len(batch.targets):
                images = batch.images.to(self.device, non_blocking=True)
                images = images.contiguous(memory_format=torch.channels_last)
                targets = batch.targets.to(self.device, non_blocking=True)
                with self._autocast():
                    logits = self.model(images)
                loss = F.cross_entropy(
                    logits.float(), targets, label_smoothing=options.label_smoothing
                )
                self.scaler.scale(loss / options.accumulate).backward()
                # Summed on the device: reading .item() every step would stall a GPU.
                loss_sum += loss.detach() * len(targets)
                correct += (logits.argmax(1) == targets).sum()
                seen += len(targets)
            if (i + 1) % options.accumulate == 0 or (i + 1) == len(loader):
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
        seconds = time.perf_counter() - started
        return {
            "train_loss": float(loss_sum) / max(1, seen),
            "train_accuracy": float(correct) / max(1, seen),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_images_per_s": seen / seconds if seconds > 0 else 0.0,
        }

    @torch.no_grad()
    def predict(self, rows: ImageRows) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities [n, C] for the rows that decode, and their row indices."""
        self.model.eval()
        loader = make_loader(
            rows, self.options.batch_size * 2, shuffle=False, workers=self.options.loader_workers
        )
        probabilities, kept = [], []
        for batch in prefetch(iter(loader)):
            if not len(batch.targets):
                continue
            images = batch.images.to(self.device).contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(images)
            probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
            kept.extend(batch.rows)
        if not probabilities:
            raise TransferPipeError("none of the images to evaluate could be decoded")
        return torch.cat(probabilities).numpy(), np.asarray(kept, dtype=np.int64)

    def validate(self) -> dict[str, float]:
        """Validation loss (without label smoothing) and accuracy."""
        proba, rows = self.predict(self.val_rows)
        targets = self.val_rows.targets[rows]
        picked = np.clip(proba[np.arange(len(rows)), targets], 1e-12, None)
        return {
            "val_loss": float(-np.log(picked).mean()),
            "val_accuracy": float((proba.argmax(1) == targets).mean()),
        }


def load_model_weights(
    model: torch.nn.Module, payload: Mapping[str, Any], folder: CheckpointFolder
) -> None:
    """Put a ``best`` checkpoint's weights into ``model``; weights that do not fit it are
    refused naming the checkpoint."""
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise folder.refused(BEST, f"its weights do not fit this model ({exc})") from exc


def _warn_of_old_checkpoints(folder: CheckpointFolder) -> None:
    """Say that checkpoints of the old pickle format are ignored (loading them could run
    code), so a run that had one starts over instead of resuming."""
    old = [name for name in _OLD_FORMAT if folder.holds_file(name)]
    if old:
        logger.warning(
            "not loading %s in %s: checkpoints of an older transfer-pipe, pickles that could "
            "run code when loaded; this run starts over (delete them to silence this)",
            " and ".join(old),
            folder.url,
        )


def _rng_states() -> dict[str, Any]:
    """Every RNG the training draws from, as tensors and JSON data (no numpy arrays)."""
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple), "legacy=True: the tuple form"
    name, keys, position, has_gauss, cached = numpy_state
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"].cpu())
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
