"""The seeded, resumable training loop of every stage: AdamW + warmup, EMA, checkpoints, loss history."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .losses import TrainError


@dataclass
class TrainConfig:
    """Settings shared by the transformer, autoencoder and temporal-LoRA loops."""

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "bf16"
    checkpoint_every: int = 200
    log_every: int = 10
    threads: int = 1
    max_minutes: float = 0.0  # > 0: stop (with a checkpoint) when this wall time is spent


@dataclass
class RunResult:
    """Where a run stopped (steps done), its logged loss history and this invocation's wall seconds."""

    step: int
    history: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Checkpoint:
    """A run's resumable state: weights in safetensors, optimizer state via weights_only torch.save."""

    root: Path

    def exists(self) -> bool:
        return (self.root / "state.json").is_file()

    def save(self, step: int, model: nn.Module, ema: AveragedModel | None, opt, history: dict) -> None:
        tmp = self.root.with_name(self.root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        if ema is not None:
            ema_sd = {k: v.contiguous() for k, v in ema.module.state_dict().items()}
            save_file(ema_sd, tmp / "ema.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        n_avg = int(ema.n_averaged) if ema is not None else 0
        (tmp / "state.json").write_text(json.dumps({"step": step, "n_averaged": n_avg, "history": history}))
        shutil.rmtree(self.root, ignore_errors=True)
        tmp.rename(self.root)  # atomic: a crash never leaves a half-written checkpoint

    def load(self, model: nn.Module, ema: AveragedModel | None, opt) -> tuple[int, dict]:
        model.load_state_dict(load_file(self.root / "model.safetensors"))
        state = json.loads((self.root / "state.json").read_text())
        if ema is not None:
            ema.module.load_state_dict(load_file(self.root / "ema.safetensors"))
            ema.n_averaged.fill_(state["n_averaged"])
        opt.load_state_dict(torch.load(self.root / "optimizer.pt", weights_only=True))
        return int(state["step"]), state["history"]


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA of the weights (torch's AveragedModel); the EMA copy is what gets exported.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates: a constant 0.999 would
    still hold ~13 % of the random init after 2000 steps, and our CPU runs are that short.
    """

    def avg_fn(averaged: Tensor, current: Tensor, n: Tensor) -> Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return torch.lerp(current, averaged, d)

    return AveragedModel(model, avg_fn=avg_fn, use_buffers=True)


def step_generator(seed: int, step: int) -> torch.Generator:
    """Every step draws its data, noise and σ from its own generator: resuming replays exactly."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / max(warmup, 1))


def run_loop(
    model: nn.Module,
    loss_fn: Callable[[int, torch.Generator], Tensor],
    cfg: TrainConfig,
    ckpt: Checkpoint | None,
    desc: str,
) -> tuple[AveragedModel, RunResult]:
    """Generic seeded, resumable loop: AdamW + warmup, EMA, tqdm, checkpoints, loss history."""
    torch.set_num_threads(cfg.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = make_ema(model, cfg.ema_decay)
    start, history = 0, {"step": [], "loss": []}
    if ckpt is not None and ckpt.exists():
        start, history = ckpt.load(model, ema, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup), last_epoch=-1)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * _lr_lambda(cfg.warmup)(start)
    sched.last_epoch = start
    t0 = time.monotonic()
    running: list[float] = []
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, mininterval=2.0)
    step = start
    for step in bar:
        loss = loss_fn(step, step_generator(cfg.seed, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(model)
        running.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0:
            history["step"].append(step + 1)
            history["loss"].append(sum(running) / len(running))
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
            running = []
        out_of_time = cfg.max_minutes > 0 and (time.monotonic() - t0) > 60 * cfg.max_minutes
        if ckpt is not None and (
            (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or out_of_time
        ):
            ckpt.save(step + 1, model, ema, opt, history)
        if out_of_time:
            step += 1
            break
    else:
        step = cfg.steps
    model.eval()
    return ema, RunResult(step=step, history=history, seconds=time.monotonic() - t0)
