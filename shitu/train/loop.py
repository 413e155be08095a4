"""The training loop: P x K batches, ArcMargin + triplet + distillation, EMA, checkpoints, resume."""

from __future__ import annotations

import json
import math
import pickle
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shitu.embed import resolve_model
from shitu.errors import ShituError
from shitu.metrics import recall_at_1_of_vectors
from shitu.nn.heads import ArcMarginHead
from shitu.nn.lcnet import EmbeddingNet
from shitu.nn.losses import cosine_distillation, relational_distillation, triplet_angular_margin
from shitu.train.augment import augment, fixed_views, normalize
from shitu.train.config import TrainConfig, to_toml
from shitu.train.data import PKSampler, decode_all, read_records
from shitu.train.distributed import check_batch, check_in_sync, join, leave, mean_over_ranks, shard
from shitu.progress import Progress


class ModelEMA:
    """Exponential moving average of all weights and buffers, warmed up over the first steps."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                self.state[key].copy_(value)


CALIBRATION_IMAGES = 512


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: list[torch.Tensor]):
    """Replace every trained batch norm's running statistics by their exact average over ``batches``.

    Frozen ones (no trainable affine weights: the ImageNet stem of an EfficientNet teacher) keep theirs.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and (m.weight is None or m.weight.requires_grad)]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
        norm.train()
    for batch in batches:
        model(batch)
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def calibration_batches(images: torch.Tensor, seed: int, device="cpu") -> list[torch.Tensor]:
    """A fixed random subset of un-augmented uint8 images, normalised, in batches of 64."""
    chosen = torch.from_numpy(np.random.default_rng(seed).permutation(len(images))[:CALIBRATION_IMAGES])
    return [normalize(images[chosen[i:i + 64]].to(device)) for i in range(0, len(chosen), 64)]


def calibrate_on_training_data(model: nn.Module, config: TrainConfig, size: int):
    """Recompute batch-norm statistics for input side ``size`` from the run's own training images."""
    items = read_records(config.data, config.lists)
    rng = np.random.default_rng(config.seed)
    subset = [items[i] for i in rng.permutation(len(items))[:CALIBRATION_IMAGES]]
    images = torch.from_numpy(decode_all(subset, size, max(1, torch.get_num_threads())))
    recalibrate_batch_norm(model, calibration_batches(images, config.seed))


def read_checkpoint(path: Path, device="cpu") -> dict:
    """A training checkpoint's state; a missing or foreign file becomes one clear error."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise ShituError(f"checkpoint not found: {path}") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, pickle.UnpicklingError) as exc:
        raise ShituError(f"{path} is not a shitu training checkpoint ({exc})") from None
    if not isinstance(state, dict) or not {"config", "model", "epoch"} <= state.keys():
        raise ShituError(f"{path} is not a shitu training checkpoint (no config, model and epoch)")
    return state


def best_weights(state: dict) -> dict:
    """The weights to evaluate, export or start from: the EMA when the run kept one."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def build_model(config: TrainConfig) -> nn.Module:
    """The embedding network a config describes: PP-LCNet, or an EfficientNet-Lite teacher to fine-tune."""
    if config.backbone != "pplcnet":
        from shitu.nn.teacher import LiteEmbeddingNet

        return LiteEmbeddingNet(config.backbone, config.embedding_size, config.bn_neck, config.dropout,
                                config.frozen_blocks)
    return EmbeddingNet(config.scale, config.embedding_size, config.bn_neck, config.dropout)


def learning_rate(config: TrainConfig, step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


class StudentStep(nn.Module):
    """The trainable parts behind one forward, so DDP sees and averages all of their gradients.

    The network may run under autocast; the head and projection feed the losses and stay float32.
    """

    def __init__(self, model: nn.Module, head: nn.Module, projection: nn.Module | None):
        super().__init__()
        self.model, self.head, self.projection = model, head, projection

    def forward(self, images: torch.Tensor, labels: torch.Tensor, with_head: bool):
        embeddings = self.model(images).float()
        with torch.autocast(images.device.type, enabled=False):
            logits = self.head(embeddings, labels) if with_head else None
            projected = self.projection(embeddings) if self.projection is not None else None
        return embeddings, logits, projected


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision type for ``amp`` on ``device`` (None: full float32)."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise ShituError("amp = \"fp16\" needs a GPU; on a CPU use \"bf16\" or \"off\"")
    return {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_folder(path: Path) -> Path:
    """Create the run directory; a file there (or above it), or no permission, is one clear error."""
    if path.exists() and not path.is_dir():
        raise ShituError(f"--out {path} is a file; name a folder for the run")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # FileExistsError for a file, NotADirectoryError below one
        raise ShituError(f"cannot use --out {path} as the run folder: {exc.strerror or exc}") from None
    return path


class Trainer:
    """Owns the run directory: ``config.toml``, ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``curves.png``."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: str | None = None, quiet: bool = False):
        self.world, self.device = join(device)
        check_batch(config.batch_classes, self.world)
        self.config, self.run_dir, self.quiet = config, Path(run_dir), quiet or not self.world.main
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.items = read_records(config.data, config.lists)
        run_folder(self.run_dir)  # a file in its place fails now, not after the first epoch
        self.label_names = sorted({item.label for item in self.items})
        index = {name: i for i, name in enumerate(self.label_names)}
        self.labels = np.array([index[item.label] for item in self.items])
        if len(self.label_names) < 2:
            raise ShituError("training needs at least two labels")
        # channels_last: depthwise and 1x1 convolutions train ~1.35x faster on this CPU (measured).
        self.model = build_model(config).to(self.device, memory_format=torch.channels_last)
        self.head = ArcMarginHead(config.embedding_size, len(self.label_names),
                                  config.arc_scale, config.arc_margin).to(self.device)
        self.teacher, self.projection = None, None
        if config.teacher and config.distill_weight > 0:
            from shitu.nn.teacher import Teacher

            self.teacher = Teacher(config.teacher).to(self.device, memory_format=torch.channels_last)
            self.projection = nn.Linear(config.embedding_size, self.teacher.feature_size).to(self.device)
        self.caches = {}
        self.teacher_cache = {}  # size -> (features [images, views, dim], filled [images, views])
        if config.init_from:
            self.load_initial_weights(config.init_from)
        self.step_module = StudentStep(self.model, self.head, self.projection)
        if self.world.size > 1:
            # Parameters the current epoch leaves unused (the head before metric_start_epoch) are allowed.
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, find_unused_parameters=True)
        self.amp_dtype = autocast_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer = self.make_optimizer()
        self.ema = ModelEMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.sampler = PKSampler(self.labels, config.batch_classes, config.batch_per_class, config.seed)
        self.start_epoch, self.best_recall = 0, -1.0
        self.generator = torch.Generator()  # seeded per epoch and rank in train_epoch

    def trainable(self) -> list[nn.Module]:
        return [m for m in (self.model, self.head, self.projection) if m is not None]

    def make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for module in self.trainable():
            for parameter in module.parameters():
                if not parameter.requires_grad:
                    continue
                (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.config.lr, momentum=self.config.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=self.config.lr)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, epoch: int, metrics: dict) -> dict:
        return {
            "epoch": epoch, "config": asdict(self.config), "labels": self.label_names,
            "model": self.model.state_dict(), "head": self.head.state_dict(),
            "projection": self.projection.state_dict() if self.projection else None,
            "ema": self.ema.state if self.ema else None, "ema_updates": self.ema.updates if self.ema else 0,
            "optimizer": self.optimizer.state_dict(), "best_recall": self.best_recall,
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "metrics": metrics,
        }

    def save(self, state: dict, name: str):
        """Write atomically so an interrupted save never leaves a half checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".{name}.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / name)

    def resume(self):
        """Continue from ``last.pt`` of this run directory."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            raise ShituError(f"nothing to resume: {path} does not exist")
        state = read_checkpoint(path, self.device)
        if state["labels"] != self.label_names:
            raise ShituError("cannot resume: the training labels differ from the checkpoint's")
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        if self.projection is not None and state["projection"] is not None:
            self.projection.load_state_dict(state["projection"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.state, self.ema.updates = state["ema"], state["ema_updates"]
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch, self.best_recall = state["epoch"] + 1, state["best_recall"]

    def load_initial_weights(self, source: str):
        """Start from another run's weights (its EMA when it has one) or from an exported ONNX model.

        The head comes along only from a checkpoint with the same labels, the distillation projection
        only from a checkpoint with the same teacher; what is missing is fitted to the loaded network
        (``fit_missing_parts``).
        """
        path = resolve_model(source)
        size = self.config.resolution_at(0)
        if path.suffix == ".onnx":
            from shitu.nn.from_onnx import load_onnx_into

            if self.config.backbone != "pplcnet":
                raise ShituError(f"init_from an ONNX model needs backbone = pplcnet, not {self.config.backbone}")

            images = self.cache(self.items, size, "calibration")
            load_onnx_into(self.model, path, calibration_batches(images, self.config.seed, self.device))
            self.fit_missing_parts(size, head=True, projection=True)
            return
        try:
            state = read_checkpoint(path, self.device)
        except ShituError as exc:
            raise ShituError(f"cannot start from a checkpoint: {exc}") from None
        try:
            self.model.load_state_dict(best_weights(state))
        except RuntimeError:
            raise ShituError(f"cannot start from {path}: its network differs from this config's "
                             "(scale, embedding_size or bn_neck)") from None
        same_labels = state.get("labels") == self.label_names
        if same_labels:
            self.head.load_state_dict(state["head"])
        # A projection maps onto one teacher's features: it comes along only from a run with that teacher.
        has_projection = (self.projection is not None and state.get("projection") is not None
                          and state["config"].get("teacher") == self.config.teacher)
        if has_projection:
            self.projection.load_state_dict(state["projection"])
        self.fit_missing_parts(size, head=not same_labels, projection=not has_projection)

    @torch.no_grad()
    def fit_missing_parts(self, size: int, head: bool, projection: bool):
        """Fit a fresh head and projection to the loaded network, so a fine-tune starts from them
        instead of fighting random ones.

        Head: each class's row is the mean embedding of its training photos ("imprinting").
        Projection: the ridge-regression map from centred embeddings to centred teacher features.
        """
        projection = projection and self.projection is not None
        if not (head or projection):
            return
        images = self.cache(self.items, size, "calibration")
        self.model.eval()
        raw = self.forward_in_batches(self.model, images)
        self.model.train()
        if head:
            labels = torch.from_numpy(self.labels).to(self.device)
            means = torch.zeros(len(self.label_names), raw.shape[1], device=self.device)
            self.head.weight.copy_(F.normalize(means.index_add_(0, labels, F.normalize(raw))))
        if projection:
            target = self.forward_in_batches(self.teacher, images)
            x, y = raw - raw.mean(0), target - target.mean(0)
            gram = x.T @ x + 1e-3 * torch.trace(x.T @ x) / x.shape[1] * torch.eye(x.shape[1], device=x.device)
            self.projection.weight.copy_(torch.linalg.solve(gram, x.T @ y).T)
            self.projection.bias.zero_()

    # -- data --------------------------------------------------------------------------------
    def cache(self, items, side: int, key: str) -> torch.Tensor:
        """Decoded images at ``side`` px, computed once per (set, side)."""
        if (key, side) not in self.caches:
            with Progress(len(items), f"decoding {key} images at {side}px", self.quiet) as bar:
                array = decode_all(items, side, max(1, torch.get_num_threads()), bar.advance)
            self.caches[(key, side)] = torch.from_numpy(array)
        return self.caches[(key, side)]

    # -- one epoch -----------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, target=None) -> dict:
        """The weighted loss terms of one batch (``target``: the teacher's features, if already known).

        ArcMargin and triplet losses start at ``metric_start_epoch``: from random weights they fight the
        distillation signal early on (measured: lower recall after the same number of steps).
        """
        c = self.config
        metric_on = epoch >= c.metric_start_epoch
        embeddings, logits, projected = self.step_module(images, labels, metric_on and c.arc_weight > 0)
        parts = {}
        if logits is not None:
            parts["arc"] = F.cross_entropy(logits, labels, label_smoothing=c.label_smoothing) * c.arc_weight
        if metric_on and c.triplet_weight > 0:
            parts["triplet"] = triplet_angular_margin(embeddings, labels, c.triplet_margin) * c.triplet_weight
        if self.teacher is not None:
            target = self.teacher(images).float() if target is None else target
            if c.distill_kind == "cosine":
                parts["distill"] = cosine_distillation(projected - projected.mean(0), target - target.mean(0)) \
                    * c.distill_weight
            else:
                parts["distill"] = relational_distillation(embeddings, target) * c.distill_weight
        return parts

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, size: int, epoch: int, lr: float,
                   indices=None):
        """One optimizer step on a batch of uint8 cache crops: augment, losses, backward, update, EMA.

        With ``teacher_views``, ``indices`` (the images' positions in the training set) pick the cache.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        cached = self.config.teacher_views > 0 and self.teacher is not None
        if cached:
            indices = torch.as_tensor(indices)
            views = torch.randint(self.config.teacher_views, (len(indices),), generator=self.generator)
            x = self.fixed_view_batch(images, indices, views, size)
        else:
            x = augment(images.to(self.device), size, self.config, self.generator)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            target = self.cached_teacher_features(x, indices, views, size) if cached else None
            parts = self.losses(x, labels.to(self.device), epoch, target)
        loss = sum(parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_([p for m in self.trainable() for p in m.parameters()], 5.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        return loss, parts

    def view_key(self, index: int, view: int) -> int:
        """The seed of fixed view ``view`` of training image ``index`` (``teacher_views``)."""
        return self.config.seed * 1_000_000_007 + index * self.config.teacher_views + view

    def fixed_view_batch(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor,
                         size: int) -> torch.Tensor:
        """Fixed view ``views[j]`` of training image ``indices[j]``, for each uint8 cache crop ``images[j]``."""
        keys = [self.view_key(int(i), int(v)) for i, v in zip(indices, views)]
        return fixed_views(images.to(self.device), keys, size, self.config)

    @torch.no_grad()
    def cached_teacher_features(self, x: torch.Tensor, indices: torch.Tensor, views: torch.Tensor,
                                size: int) -> torch.Tensor:
        """The teacher's features of fixed views: computed on a view's first use, then kept (on the CPU)."""
        if size not in self.teacher_cache:
            shape = (len(self.items), self.config.teacher_views)
            self.teacher_cache[size] = (torch.zeros(*shape, self.teacher.feature_size),
                                        torch.zeros(shape, dtype=torch.bool))
        features, filled = self.teacher_cache[size]
        missing = ~filled[indices, views]
        if missing.any():
            new = self.teacher(x[missing.to(x.device)]).float().cpu()
            features[indices[missing], views[missing]] = new
            filled[indices[missing], views[missing]] = True
        return features[indices, views].to(x.device)

    def train_epoch(self, epoch: int) -> dict:
        c, size = self.config, self.config.resolution_at(epoch)
        images = self.cache(self.items, round(size * 1.25), "train")
        labels = torch.from_numpy(self.labels)
        steps, total = self.sampler.steps, self.sampler.steps * c.epochs
        for module in self.trainable():
            module.train()
        # Seeded from (seed, epoch, rank): resuming needs no generator state, and ranks differ.
        self.generator.manual_seed(c.seed * 1_000_003 + epoch * 1_009 + self.world.rank)
        sums, started = {}, time.time()
        with Progress(steps, f"epoch {epoch + 1}/{c.epochs} at {size}px", self.quiet) as bar:
            for step, batch in enumerate(self.sampler.epoch(epoch)):
                global_step = epoch * steps + step
                lr = learning_rate(c, global_step, total, c.warmup_epochs * steps)
                local = shard(batch, c.batch_per_class, self.world)
                loss, parts = self.train_step(images[local], labels[local], size, epoch, lr, local)
                for name, value in {"loss": loss, **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                bar.advance(f"loss {float(loss.detach()):.3f}")
        metrics = mean_over_ranks({name: value / steps for name, value in sums.items()}, self.world)
        metrics.update(epoch=epoch + 1, lr=lr, size=size, seconds=round(time.time() - started, 1),
                       processes=self.world.size,
                       images_per_second=round(steps * len(batch) / (time.time() - started), 2))
        return metrics

    # -- validation ------------------------------------------------------------------------------
    def eval_model(self, size: int) -> nn.Module:
        """The weights to evaluate and export (the EMA when there is one), batch norm recalibrated.

        Running statistics lag behind the weights early on, and EMA-averaged statistics never match the
        averaged weights; a deep network without residuals then maps every image to the same point.
        Recomputing them on un-augmented training images at ``size`` ("precise BN") fixes both, and
        the recalibrated statistics are kept for the checkpoint.
        """
        model = build_model(self.config).to(self.device)
        model.load_state_dict(self.ema.state if self.ema else self.model.state_dict())
        images = self.cache(self.items, size, "calibration")
        recalibrate_batch_norm(model, calibration_batches(images, self.config.seed, self.device))
        target = self.ema.state if self.ema else None
        for key, value in model.state_dict().items():
            if "running_" in key or "num_batches" in key:
                (target[key] if target is not None else self.model.state_dict()[key]).copy_(value)
        return model

    @torch.no_grad()
    def forward_in_batches(self, module: nn.Module, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """``module``'s float32 outputs for uint8 ``images``, normalised and run ``batch`` at a time."""
        return torch.cat([module(normalize(images[i:i + batch].to(self.device))).float()
                          for i in range(0, len(images), batch)])

    def embed(self, model: nn.Module, images: torch.Tensor) -> np.ndarray:
        model.eval()
        return F.normalize(self.forward_in_batches(model, images)).cpu().numpy()

    def validate(self, model: nn.Module, size: int) -> float | None:
        """recall@1 of ``val`` queries against ``val_gallery`` (or leave-one-out within ``val``)."""
        c = self.config
        if not c.val_list:
            return None
        queries = read_records(c.data, [c.val_list])
        gallery = read_records(c.data, [c.val_gallery_list]) if c.val_gallery_list else queries
        q = self.embed(model, self.cache(queries, size, "val"))
        g = q if gallery is queries else self.embed(model, self.cache(gallery, size, "val-gallery"))
        return recall_at_1_of_vectors(q, [i.label for i in queries], g, [i.label for i in gallery],
                                      leave_one_out=gallery is queries)

    # -- the run ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train the remaining epochs; under torchrun only rank 0 validates and writes the run directory."""
        try:
            if self.world.main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "config.toml").write_text(to_toml(self.config), encoding="utf-8")
            metrics = {}
            for epoch in range(self.start_epoch, self.config.epochs):
                metrics = self.train_epoch(epoch)
                if self.world.main:
                    self.finish_epoch(epoch, metrics)
                self.world.barrier()
            check_in_sync(self.model, self.world)
            return metrics
        finally:
            leave(self.world)

    def finish_epoch(self, epoch: int, metrics: dict):
        """Validate (every ``val_every`` epochs and after the last), checkpoint, log and plot one epoch."""
        model = self.eval_model(metrics["size"])  # also recalibrates the checkpoint's batch norm
        due = (epoch + 1) % self.config.val_every == 0 or epoch + 1 == self.config.epochs
        recall = self.validate(model, metrics["size"]) if due else None
        if recall is not None:
            metrics["val_recall@1"] = recall
        state = self.checkpoint(epoch, metrics)
        self.save(state, "last.pt")
        if recall is not None and recall > self.best_recall:
            self.best_recall = recall
            state["best_recall"] = recall
            self.save(state, "best.pt")
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(metrics) + "\n")
        plot_curves(self.run_dir)


def plot_curves(run_dir: Path):
    """Draw ``metrics.jsonl`` as ``curves.png`` (losses, learning rate, validation recall@1)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    epochs = [r["epoch"] for r in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("loss", "arc", "triplet", "distill"):
        if key in rows[-1]:
            axes[0].plot(epochs, [r.get(key) for r in rows], label=key)
    axes[0].set_title("losses")
    axes[0].legend()
    axes[1].plot(epochs, [r["lr"] for r in rows])
    axes[1].set_title("learning rate")
    validated = [r for r in rows if "val_recall@1" in r]
    if validated:
        axes[2].plot([r["epoch"] for r in validated], [r["val_recall@1"] for r in validated], marker="o")
    axes[2].set_title("val recall@1")
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(run_dir / "curves.png", dpi=80)
    plt.close(figure)
