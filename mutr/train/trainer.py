"""The training loop: one process, or several through ``torchrun`` (DDP: gloo on CPU, NCCL on GPU).

A run lives in one folder::

    out_dir/config.yaml          the resolved recipe       run.json     git SHA, world size, versions
    out_dir/metrics.jsonl        one line per log step / validation
    out_dir/curves.png           loss, lr and validation curves (redrawn at each checkpoint)
    out_dir/checkpoints/state.pt full training state (atomic), read with weights_only=True
    out_dir/model/               config.json + model.safetensors (+ tokenizer.json): the exported model

Starting a run whose folder already holds a state resumes it (model, optimizer, scheduler, grad
scaler, every RNG, step and sampler position), so a killed run continues bit-identically on the
CPU. Only rank 0 writes. The library never prints: progress goes to ``callbacks`` as
``TrainEvent``s and to ``logging``. A non-finite loss stops the run with ``TrainingDiverged``
naming the step and the loss values; nothing is saved after it, so the last checkpoint stays
the last good one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.distributed as dist

from mutr import distributed
from mutr.errors import CheckpointError, ConfigError, MutrError, OutputExistsError
from mutr.train import checkpoint as ckpt
from mutr.train.config import TrainConfig, resolve_model_config
from mutr.train.data import build_train_data, build_val_data, collate_by_modality, val_samples
from mutr.train.losses import LossWeights, SetCriterion
from mutr.train.matcher import MatcherWeights, ReferringMatcher
from mutr.train.optim import (LearningRates, autocast, build_optimizer, build_scheduler, clip_gradients,
                              make_grad_scaler, resolve_precision, steps_for_epochs)
from mutr.train.recorder import Recorder
from mutr.train.targets import prepare_targets
from mutr.train.validate import evaluate_clips, reference_kwargs

log = logging.getLogger(__name__)


class TrainingDiverged(MutrError):
    """The loss became NaN or infinite; the run stopped without saving."""


@dataclass
class TrainEvent:
    """What callbacks receive. ``kind``: start, step, validation, checkpoint, end."""

    kind: Literal["start", "step", "validation", "checkpoint", "end"]
    step: int
    total_steps: int
    epoch: float = 0.0
    loss: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    message: str = ""


Callback = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    loss: float | None
    model_dir: Path | None
    metrics: dict[str, float]
    resumed_from: int | None


class Trainer:
    """``Trainer(config).fit()``; see the module docstring for what a run writes."""

    def __init__(self, config: TrainConfig, *, out_dir: str | Path | None = None,
                 resume: bool | Literal["auto"] | str | Path = "auto",
                 callbacks: Sequence[Callback] = ()) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        if isinstance(resume, (str, Path)) and resume != "auto":
            out_dir = out_dir or resume
            resume = True
        self.out_dir = Path(out_dir or config.run.out_dir)
        self.resume_mode = resume
        self.rank, self.world_size, self.device = _init_distributed(config.run.device)
        self.is_main = self.rank == 0

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.config
        self._restore_globals = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        if cfg.optim.accumulate < 1:
            raise ConfigError(f"optim.accumulate must be >= 1, got {cfg.optim.accumulate}")
        state_file = self.out_dir / "checkpoints" / ckpt.STATE_NAME
        if self.resume_mode is True and not state_file.is_file():
            raise CheckpointError(f"nothing to resume in {self.out_dir}: no checkpoints/{ckpt.STATE_NAME}; "
                                  "drop --resume to start a new run")
        if self.resume_mode is False and state_file.is_file():
            raise OutputExistsError(f"{self.out_dir} already holds a run; resume it (the default) or pass "
                                    "another --out")
        resume_state = ckpt.load_state(state_file) if state_file.is_file() and self.resume_mode else None

        seed = cfg.run.seed + self.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

        from mutr.model.mutr import MUTR

        self.model = MUTR(resolve_model_config(cfg.model))
        if cfg.model.tokenizer:
            from mutr.train.tokenizer import load_or_build

            self.model._tokenizer = load_or_build(cfg.model.tokenizer)
        if cfg.model.audio_weights and resume_state is None:
            if self.model.audio_encoder is None or not hasattr(self.model.audio_encoder.encoder, "load_weights"):
                raise ConfigError(f"model.audio_weights is set but preset {cfg.model.preset!r} has no VGGish "
                                  "audio encoder; use an -audio/-joint preset or drop model.audio_weights")
            self.model.audio_encoder.encoder.load_weights(cfg.model.audio_weights)
        if cfg.model.init and resume_state is None:
            _load_init(self.model, cfg.model.init, cfg.model.init_strict)
        elif resume_state is None and self.model.backbone._own and self.model.config.backbone.pretrained:
            load_backbone_pretrained(self.model, self.model.config.backbone.pretrained)
        if cfg.model.disable_dropout:
            _disable_dropout(self.model)
        self.model.to(self.device).train()
        self.ddp_model: torch.nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # the other modality's encoder (and the RoBERTa pooler) get no gradient in a step
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

        self.dataset, self.sampler = build_train_data(cfg.data, seed=cfg.run.seed, rank=self.rank,
                                                      world_size=self.world_size)
        self.val_sets = build_val_data(cfg.data, seed=cfg.run.seed) if self.is_main else []
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=cfg.data.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=cfg.data.num_workers, collate_fn=collate_by_modality,
            generator=torch.Generator().manual_seed(cfg.run.seed),  # keeps the global RNG untouched
            pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = len(self.sampler) // cfg.data.batch_size
        if self.batches_per_epoch < cfg.optim.accumulate:
            raise ConfigError(f"an epoch has {self.batches_per_epoch} batches, fewer than optim.accumulate="
                              f"{cfg.optim.accumulate}; use more data or a smaller batch")
        self.steps_per_epoch = self.batches_per_epoch // cfg.optim.accumulate
        o = cfg.optim
        self.total_steps = o.max_steps or max(1, math.ceil(o.epochs * self.steps_per_epoch))
        milestones = o.lr_drop_steps or steps_for_epochs(o.lr_drop, self.steps_per_epoch)
        rates = LearningRates(o.lr, o.lr_backbone, o.lr_text_encoder, o.lr_linear_proj_mult, o.lr_audio_encoder,
                              o.weight_decay)
        self.optimizer = build_optimizer(self.model, rates)
        self.scheduler = build_scheduler(self.optimizer, milestones, o.lr_gamma, o.warmup_steps, o.warmup_factor)
        self.precision = resolve_precision(o.precision, self.device)
        self.scaler = make_grad_scaler(self.precision, self.device)
        lc = cfg.loss
        matcher = ReferringMatcher(MatcherWeights(lc.cost_class, lc.cost_bbox, lc.cost_giou, lc.cost_mask,
                                                  lc.cost_dice), mask_region=lc.mask_region)
        self.criterion = SetCriterion(matcher, LossWeights(lc.ce, lc.bbox, lc.giou, lc.mask, lc.dice),
                                      mask_region=lc.mask_region, aux_loss=lc.aux_loss)
        self.checkpoint_every = cfg.run.checkpoint_every or self.steps_per_epoch
        self.val_every = cfg.run.val_every or self.checkpoint_every

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.resumed_from: int | None = None
        if resume_state is not None:
            self._restore(resume_state)
        self.recorder = Recorder(self.out_dir, enabled=self.is_main, tensorboard=cfg.run.tensorboard,
                                 resume_step=self.resumed_from if self.resumed_from is not None else None)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.out_dir / "config.yaml")
            (self.out_dir / "run.json").write_text(json.dumps(self._run_info(), indent=2) + "\n")

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        sampler_state = state["sampler"]
        self.sampler.load_state_dict(sampler_state)
        self.epoch = int(sampler_state["epoch"])
        self.batch_in_epoch = int(sampler_state["position"]) // self.config.data.batch_size
        rngs = state["rng"]
        if len(rngs) == self.world_size:
            ckpt.set_rng_state(rngs[self.rank])
        else:
            log.warning("the checkpoint was written by %d processes, this run has %d: RNG streams restart",
                        len(rngs), self.world_size)
        self.resumed_from = self.step

    def _run_info(self) -> dict[str, Any]:
        import mutr

        return {"git_sha": _git_sha(), "mutr": mutr.__version__, "torch": torch.__version__,
                "python": platform.python_version(), "world_size": self.world_size, "device": str(self.device),
                "precision": self.precision, "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "resumed_from": self.resumed_from,
                "global_batch": self.config.data.batch_size * self.world_size * self.config.optim.accumulate}

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        try:
            self._setup()
            return self._loop()
        finally:
            if hasattr(self, "recorder"):
                self.recorder.close()
            if hasattr(self, "_restore_globals"):  # a library call leaves torch's settings as it found them
                torch.set_num_threads(self._restore_globals[0])
                torch.use_deterministic_algorithms(self._restore_globals[1])
            if self.world_size > 1 and dist.is_initialized():
                dist.destroy_process_group()

    def _emit(self, event: TrainEvent) -> None:
        if self.is_main:
            for cb in self.callbacks:
                cb(event)

    def _batches(self):
        """Endless batches from the sampler position, rolling epochs over."""
        while True:
            self.sampler.set_epoch(self.epoch)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _loop(self) -> TrainResult:
        cfg = self.config
        self._emit(TrainEvent("start", self.step, self.total_steps, self._epoch_float(),
                              message=f"resumed at step {self.step}" if self.resumed_from is not None else ""))
        batches = self._batches()
        started, start_step = time.perf_counter(), self.step
        last_loss: float | None = None
        metrics: dict[str, float] = {}
        while self.step < self.total_steps:
            self.optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for a in range(cfg.optim.accumulate):
                last_micro = a == cfg.optim.accumulate - 1
                sync = contextlib.nullcontext() if (last_micro or self.world_size == 1) else self.ddp_model.no_sync()
                with sync:
                    values = self._micro_step(next(batches))
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v / cfg.optim.accumulate
            lr = self.optimizer.param_groups[0]["lr"]  # the main group's lr used by this step
            self.scaler.unscale_(self.optimizer)
            grad_norm = clip_gradients(self.model.parameters(), cfg.optim.clip_max_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            last_loss = sums["loss"]
            elapsed = time.perf_counter() - started
            rate = (self.step - start_step) / elapsed if elapsed > 0 else None
            eta = (self.total_steps - self.step) / rate if rate else None
            losses = {k: v for k, v in sums.items() if k != "loss"}
            final = self.step == self.total_steps or self._out_of_time(elapsed)
            if self.step % cfg.run.log_every == 0 or final:
                self.recorder.log({"kind": "train", "step": self.step, "epoch": self._epoch_float(), "loss": last_loss,
                                   "lr": lr, "grad_norm": float(grad_norm), "it_per_s": rate,
                                   "time": time.time(), "losses": losses})
            self._emit(TrainEvent("step", self.step, self.total_steps, self._epoch_float(), last_loss,
                                  losses, lr, rate, eta))
            if self.val_sets and (self.step % self.val_every == 0 or final):
                metrics = self.validate()
            if self.step % self.checkpoint_every == 0 or final:
                self.save_checkpoint()
            if final:
                break
        result = TrainResult(self.out_dir, self.step, last_loss, self.out_dir / "model" if self.is_main else None,
                             metrics, self.resumed_from)
        self._emit(TrainEvent("end", self.step, self.total_steps, self._epoch_float(), last_loss,
                              metrics=metrics, path=result.model_dir))
        return result

    def _out_of_time(self, elapsed: float) -> bool:
        """``run.time_limit`` reached (rank 0 decides, so every process stops at the same step)."""
        limit = self.config.run.time_limit
        if limit <= 0:
            return False
        flag = torch.tensor([float(elapsed >= limit * 60)], device=self.device)
        if self.world_size > 1:
            dist.broadcast(flag, 0)
        return bool(flag.item())

    def _epoch_float(self) -> float:
        return self.epoch + self.batch_in_epoch / max(1, self.batches_per_epoch)

    def _micro_step(self, parts: list) -> dict[str, float]:
        """Forward every modality sub-batch, check the loss is finite on all processes, backward.

        Returns the weighted total (``loss``) and each unweighted term, averaged over processes."""
        parts = [p.to(self.device) for p in parts]
        full = self.config.loss.mask_targets == "full"
        targets = [prepare_targets(p.targets, tuple(p.frames.shape[-2:]), p.mask, self.device, full) for p in parts]
        num_boxes = sum(t.num_boxes() for t in targets).to(self.device)
        if self.world_size > 1:
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / self.world_size
        num_boxes = num_boxes.clamp(min=1)
        total = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for part, tgt in zip(parts, targets):
            with autocast(self.precision, self.device):
                out = self.ddp_model(part.frames, part.mask, **reference_kwargs(self.model, part, self.device))
            losses = self.criterion(out, tgt, num_boxes)
            total = total + self.criterion.weighted_total(losses)
            for k, v in losses.items():
                terms[k] = terms.get(k, 0.0) + v.detach()
        names = sorted(terms)
        report = torch.stack([total.detach()] + [terms[k] for k in names]).float()
        if self.world_size > 1:
            dist.all_reduce(report)
            report = report / self.world_size
        if not bool(torch.isfinite(report).all()):
            self._diverged(dict(zip(["loss"] + names, report.tolist())))
        self.scaler.scale(total / self.config.optim.accumulate).backward()
        return dict(zip(["loss"] + names, report.tolist()))

    def _diverged(self, values: dict[str, float]) -> None:
        step = self.step + 1
        state = self.out_dir / "checkpoints" / ckpt.STATE_NAME
        last = f"the last good checkpoint is {state} (step {_state_step(state)})" if state.is_file() else \
            "no checkpoint was written yet"
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if not k[-1].isdigit())
        self.recorder.log({"kind": "diverged", "step": step, "losses": values})
        raise TrainingDiverged(f"the loss is not finite at step {step} ({shown}); training stopped and saved "
                               f"nothing, {last}; lower optim.lr or check the data, then resume")

    # ------------------------------------------------------------------ validation / checkpoints
    def validate(self) -> dict[str, float]:
        """Score every validation set (rank 0; the others wait at the next checkpoint barrier)."""
        from mutr.data import collate

        metrics: dict[str, float] = {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # validation must not shift the training RNG
            for name, ds in self.val_sets:
                samples = val_samples(ds, self.config.data.val_max_clips, self.config.run.seed)
                result = evaluate_clips(self.model, samples, name=name, device=self.device,
                                        collate=lambda s: collate(s, size_divisibility=1))
                metrics.update(result.metrics())
        self.recorder.log({"kind": "val", "step": self.step, "epoch": self._epoch_float(), "metrics": metrics})
        self._emit(TrainEvent("validation", self.step, self.total_steps, self._epoch_float(), metrics=metrics))
        return metrics

    def save_checkpoint(self) -> Path | None:
        """Full state + exported model + curves (all processes call it; rank 0 writes)."""
        rng = ckpt.rng_state()
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        path = None
        if self.is_main:
            epoch, batches = self.epoch, self.batch_in_epoch
            if batches >= self.batches_per_epoch:  # at an epoch's end: point at the next one
                epoch, batches = epoch + 1, 0
            sampler = self.sampler.state_dict(position=batches * self.config.data.batch_size)
            sampler["epoch"] = epoch
            state = ckpt.training_state(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                        scaler=self.scaler, step=self.step, sampler=sampler, rng=gathered,
                                        extra={"config": self.config.to_dict()})
            path = ckpt.save_state(state, self.out_dir / "checkpoints", keep=self.config.run.keep_checkpoints)
            model_dir = self.out_dir / "model"
            ckpt.export_model(self.model, model_dir)
            if self.model._tokenizer is not None and self.model.text_encoder is not None:
                from mutr.train.tokenizer import save_tokenizer_json

                save_tokenizer_json(self.model._tokenizer, model_dir)
            self.recorder.plot()
            self._emit(TrainEvent("checkpoint", self.step, self.total_steps, self._epoch_float(), path=path))
        if self.world_size > 1:
            dist.barrier()
        return path


def train(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """``Trainer(config, **kwargs).fit()``."""
    return Trainer(config, **kwargs).fit()


# ---------------------------------------------------------------------- helpers
def _init_distributed(device: str) -> tuple[int, int, torch.device]:
    # the other ranks wait at the checkpoint while rank 0 validates: allow for a long validation
    world = distributed.init(device, timeout_minutes=60)
    return world.rank, world.size, world.device


def _load_init(model: torch.nn.Module, init: str, strict: bool) -> None:
    from safetensors.torch import load_file

    path = Path(init)
    if not path.exists():
        from mutr.hub import resolve_checkpoint

        path = resolve_checkpoint(init)
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"model.init {init!r} has no model.safetensors; give a `save_pretrained` folder")
    state = load_file(str(weights))
    if strict:
        model.load_state_dict_checked(state)
        return
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(fitting))
    missing = sorted(set(own) - set(fitting))
    model.load_state_dict(fitting, strict=False)
    log.info("model.init: loaded %d tensors, skipped %d, left %d at their init", len(fitting), len(skipped),
             len(missing))


def load_backbone_pretrained(model: torch.nn.Module, source: str) -> Path:
    """Start a backbone family (swin, convnext, ...) from the official recipe's pretraining file:
    ``source`` is a local ``.pth`` or a registry name of kind ``backbone`` (downloaded into the
    cache if needed). The file is read as official checkpoints are (``torch.load(weights_only=True)``,
    ``{"model": ...}`` / ``{"state_dict": ...}`` unwrapped) and mapped by the family's
    ``convert_pretrained``; returns the file used."""
    path = Path(source).expanduser()
    if not path.is_file():
        from mutr import hub

        if source not in hub.REGISTRY:
            raise ConfigError(f"model.backbone.pretrained {source!r} is neither a file nor a registry name; "
                              "see `mutr download --list` (kind backbone)")
        entry = hub.get_entry(source)
        if entry.kind != "backbone":
            raise ConfigError(f"model.backbone.pretrained {source!r} is a {entry.kind} entry, not backbone weights; "
                              "see `mutr download --list` (kind backbone)")
        path = hub.download(source)
    from mutr.convert import load_official_checkpoint  # the same safe reader as official checkpoints

    left = model.backbone.load_pretrained(load_official_checkpoint(path))
    log.info("backbone: loaded %s (%d tensors left at their init: %s)", path, len(left), ", ".join(left[:4]))
    return path


def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
        elif hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = 0.0


def _state_step(path: Path) -> str:
    try:
        return str(ckpt.load_state(path)["step"])
    except MutrError:
        return "?"


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
