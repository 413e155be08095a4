"""The training loop: P x K batches, ArcMargin + triplet + distillation, EMA, checkpoints, resume."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shitu.errors import ShituError
from shitu.metrics import recall_at_1_of_vectors
from shitu.nn.heads import ArcMarginHead
from shitu.nn.losses import contrastive_distillation, cosine_distillation, logit_distillation, \
    relational_distillation, triplet_angular_margin
from shitu.progress import SILENT, Reporter
from shitu.train.augment import augment, fixed_views
from shitu.train.batchnorm import CALIBRATION_IMAGES, calibration_batches, recalibrate_batch_norm
from shitu.train.checkpoint import build_model, load_teacher, read_checkpoint, save_checkpoint
from shitu.train.config import TrainConfig, to_toml
from shitu.train.curves import plot_curves
from shitu.train.data import PKSampler, decode_all, read_records
from shitu.train.distributed import check_batch, check_in_sync, join, leave, mean_over_ranks, shard
from shitu.train.ema import ModelEMA
from shitu.train.mixing import mix_rows
from shitu.train.warm_start import StudentParts, forward_in_batches, start_from


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
        """The first ``len(labels)`` images are labelled products; any after them feed only distillation."""
        embeddings = self.model(images).float()
        with torch.autocast(images.device.type, enabled=False):
            logits = self.head(labelled(embeddings, labels), labels) if with_head else None
            projected = self.projection(embeddings) if self.projection is not None else None
        return embeddings, logits, projected


def labelled(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The rows of the labelled products (the batch's first ``len(labels)``); the whole tensor, not a
    slice of it, when there are no distillation photos, so a products-only run computes as before."""
    return embeddings if len(embeddings) == len(labels) else embeddings[:len(labels)]


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
    """Owns the run directory: ``config.toml``, ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``curves.png``.

    ``best.pt`` is the validated epoch with the highest ``val_recall@1`` (plus ``distill_val_recall@1``
    when the run has a distillation validation list).
    """

    def __init__(self, config: TrainConfig, run_dir: Path, device: str | None = None,
                 reporter: Reporter = SILENT):
        self.world, self.device = join(device)
        check_batch(config.batch_classes, self.world)
        self.config, self.run_dir = config, Path(run_dir)
        self.reporter = reporter if self.world.main else SILENT  # one progress bar per run, not per rank
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
        self.distill_items = read_records(config.distill_data, config.distill_lists) if config.distill_batch else []
        self.distill_calibration = self.distill_subset(config)
        # channels_last: depthwise and 1x1 convolutions train ~1.35x faster on this CPU (measured).
        self.model = build_model(config).to(self.device, memory_format=torch.channels_last)
        self.head = ArcMarginHead(config.embedding_size, len(self.label_names),
                                  config.arc_scale, config.arc_margin).to(self.device)
        self.teacher, self.projection = None, None
        if config.teacher and config.distill_weight > 0:
            self.teacher = load_teacher(config.teacher, config.distill_kind == "logits").to(self.device, memory_format=torch.channels_last)
            self.projection = nn.Linear(config.embedding_size, self.teacher.feature_size).to(self.device)
        self.caches = {}
        self.teacher_cache = {}  # size -> (features [images, views, dim], filled [images, views])
        if config.init_from:
            images = self.cache(self.items, config.resolution_at(0), "calibration")
            start_from(config.init_from, StudentParts(self.model, self.head, self.projection, self.teacher, images,
                                                      torch.from_numpy(self.labels), self.label_names,
                                                      self.device), config)
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

    def distill_subset(self, config: TrainConfig) -> list:
        """Distillation photos for batch-norm calibration; refuses validation photos that are trained on."""
        if config.distill_val_list and self.distill_items:
            validation = {item.relpath for item in read_records(config.distill_data, [config.distill_val_list])}
            if validation & {item.relpath for item in self.distill_items}:
                raise ShituError(f"{config.distill_val_list} shares photos with the distillation training "
                                 "photos: give distill_lists without them (python -m shitu.distillset)")
        rng = np.random.default_rng(config.seed)
        return [self.distill_items[i] for i in rng.permutation(len(self.distill_items))[:CALIBRATION_IMAGES]]

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
        save_checkpoint(state, self.run_dir / name)

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

    # -- data --------------------------------------------------------------------------------
    def cache(self, items, side: int, key: str) -> torch.Tensor:
        """Decoded images at ``side`` px, computed once per (set, side)."""
        if (key, side) not in self.caches:
            with self.reporter.progress(len(items), f"decoding {key} images at {side}px") as bar:
                array = decode_all(items, side, max(1, torch.get_num_threads()), bar.advance)
            self.caches[(key, side)] = torch.from_numpy(array)
        return self.caches[(key, side)]

    # -- one epoch -----------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, target=None) -> dict:
        """The weighted loss terms of one batch (``target``: the teacher's features of it; None without a teacher).

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
            parts["triplet"] = triplet_angular_margin(labelled(embeddings, labels), labels, c.triplet_margin) \
                * c.triplet_weight
        if target is not None:
            if c.distill_kind == "cosine":
                parts["distill"] = cosine_distillation(projected - projected.mean(0), target - target.mean(0)) \
                    * c.distill_weight
            elif c.distill_kind == "logits":
                parts["distill"] = logit_distillation(projected, target, c.temperature()) * c.distill_weight
            elif c.distill_kind == "contrastive":
                parts["distill"] = contrastive_distillation(projected, target, c.temperature()) * c.distill_weight
            else:
                parts["distill"] = relational_distillation(embeddings, target) * c.distill_weight
        return parts

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, size: int, epoch: int, lr: float,
                   indices=None, distill_images=None):
        """One optimizer step on a batch of uint8 cache crops: augment, losses, backward, update, EMA.

        With ``teacher_views``, ``indices`` (the images' positions in the training set) pick the cache.
        ``distill_images`` (unlabelled uint8 crops) join the batch after the products, mixed with
        random partners when ``mix`` is on; teacher and student see the same mixed view.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        cached = self.config.teacher_views > 0 and self.teacher is not None
        if cached:
            indices = torch.as_tensor(indices)
            views = torch.randint(self.config.teacher_views, (len(indices),), generator=self.generator)
            x = self.fixed_view_batch(images, indices, views, size)
        else:
            x, teacher_x = self.mixed_views(images, distill_images, size)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            if cached:
                target = self.cached_teacher_features(x, indices, views, size)
            elif self.teacher is not None:
                target = self.teacher(x if teacher_x is None else teacher_x).float()
            else:
                target = None
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

    def mixed_views(self, images: torch.Tensor, distill_images, size: int):
        """The augmented (and mixed) batch at ``size`` for the student, and its sharper copy for the teacher.

        With ``teacher_size`` the view is rendered, mixed and shown to the teacher at that side, and the
        student gets the same image downscaled: a teacher trained at 160 px loses 0.04 recall@1 on unseen
        categories when it is run at 128 (measured, docs/training.md), so its targets degrade with the
        student's low training resolution unless it sees more pixels. Otherwise both share one view
        (teacher copy ``None``).
        """
        c = self.config
        render = c.view_size(size)
        x = augment(images.to(self.device), render, c, self.generator)
        if distill_images is not None:
            natural = augment(distill_images.to(self.device), render, c, self.generator, c.natural_crop_scale_min())
            x = torch.cat([x, natural])
            x = mix_rows(x, len(images), c.mix, c.mix_alpha, self.generator)
        if render == size:
            return x, None
        small = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return small, x.contiguous(memory_format=torch.channels_last)

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
        side = round(c.view_size(size) * 1.25)  # the teacher's view needs the pixels too
        images = self.cache(self.items, side, "train")
        distill = self.cache(self.distill_items, side, "distill") if self.distill_items else None
        labels = torch.from_numpy(self.labels)
        steps, total = self.sampler.steps, self.sampler.steps * c.epochs
        for module in self.trainable():
            module.train()
        # Seeded from (seed, epoch, rank): resuming needs no generator state, and ranks differ.
        self.generator.manual_seed(c.seed * 1_000_003 + epoch * 1_009 + self.world.rank)
        sums, started = {}, time.time()
        with self.reporter.progress(steps, f"epoch {epoch + 1}/{c.epochs} at {size}px") as bar:
            for step, batch in enumerate(self.sampler.epoch(epoch)):
                global_step = epoch * steps + step
                lr = learning_rate(c, global_step, total, c.warmup_epochs * steps)
                local = shard(batch, c.batch_per_class, self.world)
                extra = None
                if distill is not None:
                    extra = distill[torch.randint(len(distill), (c.distill_batch,), generator=self.generator)]
                loss, parts = self.train_step(images[local], labels[local], size, epoch, lr, local, extra)
                for name, value in {"loss": loss, **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                bar.advance(f"loss {float(loss.detach()):.3f}")
        metrics = mean_over_ranks({name: value / steps for name, value in sums.items()}, self.world)
        metrics.update(epoch=epoch + 1, lr=lr, size=size, seconds=round(time.time() - started, 1),
                       processes=self.world.size,
                       images_per_second=round(steps * (len(batch) + c.distill_batch) / (time.time() - started), 2))
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
        batches = calibration_batches(images, self.config.seed, self.device)
        if self.distill_calibration:  # the network sees natural photos too: measure them as well
            photos = self.cache(self.distill_calibration, size, "calibration-distill")
            batches += calibration_batches(photos, self.config.seed, self.device)
        recalibrate_batch_norm(model, batches)
        target = self.ema.state if self.ema else None
        for key, value in model.state_dict().items():
            if "running_" in key or "num_batches" in key:
                (target[key] if target is not None else self.model.state_dict()[key]).copy_(value)
        return model

    def embed(self, model: nn.Module, images: torch.Tensor) -> np.ndarray:
        """L2-normalised embeddings of uint8 ``images``, as the exported model computes them."""
        model.eval()
        return F.normalize(forward_in_batches(model, images, self.device)).cpu().numpy()

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

    def validate_distill(self, model: nn.Module, size: int) -> float | None:
        """Leave-one-out recall@1 of ``distill_val_list`` photos by folder: category-level generality."""
        c = self.config
        if not c.distill_val_list:
            return None
        items = read_records(c.distill_data, [c.distill_val_list])
        vectors = self.embed(model, self.cache(items, size, "distill-val"))
        labels = [item.label for item in items]
        return recall_at_1_of_vectors(vectors, labels, vectors, labels, leave_one_out=True)

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
        distill_recall = self.validate_distill(model, metrics["size"]) if due else None
        if distill_recall is not None:
            metrics["distill_val_recall@1"] = distill_recall
            # best.pt: the checkpoint best on products and on natural photos together
            recall = (recall or 0.0) + distill_recall
        state = self.checkpoint(epoch, metrics)
        self.save(state, "last.pt")
        if recall is not None and recall > self.best_recall:
            self.best_recall = recall
            state["best_recall"] = recall
            self.save(state, "best.pt")
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(metrics) + "\n")
        plot_curves(self.run_dir)

