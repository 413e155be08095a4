"""Training configuration: one flat dataclass, read from and written to TOML beside the run."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from shitu.errors import ShituError


BACKBONES = ("pplcnet", "efficientnet_lite0", "efficientnet_lite2")
MIX_KINDS = ("off", "mixup", "cutmix", "both")
DISTILL_KINDS = ("cosine", "contrastive", "relational", "logits")
FEATURE_KINDS = ("cosine", "contrastive")  # a projection onto the teacher's features: either loads into the other


@dataclass
class TrainConfig:
    """Every knob of a run; CLI flags override fields by name."""

    data: str = ""
    lists: list[str] = field(default_factory=list)
    val_list: str = ""
    val_gallery_list: str = ""
    val_every: int = 1  # validate (and pick best.pt) every N epochs and after the last: ~75 s each on 2 cores
    epochs: int = 30
    batch_classes: int = 16
    batch_per_class: int = 4
    resolutions: list[list[int]] = field(default_factory=lambda: [[0, 128]])
    backbone: str = "pplcnet"  # or efficientnet_lite0 / _lite2: fine-tune a teacher (see nn/teacher.py)
    frozen_blocks: int = 0  # efficientnet backbones: if > 0, keep the stem and this many blocks at ImageNet's
    scale: float = 2.5
    embedding_size: int = 512
    bn_neck: bool = True
    dropout: float = 0.2
    metric_start_epoch: int = 0
    arc_weight: float = 1.0
    arc_scale: float = 30.0
    arc_margin: float = 0.2
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    triplet_margin: float = 0.5
    teacher: str = "efficientnet_lite0"
    distill_weight: float = 2.0
    distill_kind: str = "cosine"  # cosine, contrastive or relational on features; logits: KL on ImageNet classes
    distill_temperature: float = 0.0  # logits: softens both distributions; contrastive: InfoNCE's. 0: 1.0 / 0.1
    teacher_views: int = 0  # > 0: this many fixed augmented views per image, teacher features cached
    teacher_size: int = 0  # > 0: the teacher sees each view rendered at this side, the student a downscaled copy
    distill_data: str = ""  # root of photos used only under the teacher (no product labels needed)
    distill_lists: list[str] = field(default_factory=list)  # list files below distill_data; none: walk it
    distill_batch: int = 0  # distillation photos added to each P x K batch of products
    distill_val_list: str = ""  # below distill_data: leave-one-out recall@1 by folder, picks best.pt too
    mix: str = "off"  # off, mixup, cutmix, both: the distillation photos mixed with random batch partners
    mix_alpha: float = 1.0  # Beta(alpha, alpha) mixing weights
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: int = 2
    ema_decay: float = 0.998
    crop_scale_min: float = 0.35
    distill_crop_scale_min: float = 0.0  # > 0: the natural photos' smallest crop (share of the area); 0: as products
    rotation: float = 15.0
    color_jitter: float = 0.3
    erase_prob: float = 0.25
    seed: int = 0
    threads: int = 0
    export_size: int = 0  # 0: the last training resolution
    amp: str = "auto"  # mixed precision: auto (fp16 on a GPU, off on a CPU), off, fp16, bf16
    init_from: str = ""  # a checkpoint (.pt) or exported model (.onnx, "fp32") to start from

    def temperature(self) -> float:
        """``distill_temperature``, or the distillation kind's default when it is 0."""
        return self.distill_temperature or {"logits": 1.0, "contrastive": 0.1}.get(self.distill_kind, 1.0)

    def natural_crop_scale_min(self) -> float:
        """The natural photos' smallest crop: ``distill_crop_scale_min``, or the products' when it is 0."""
        return self.distill_crop_scale_min or self.crop_scale_min

    def view_size(self, size: int) -> int:
        """The side views are rendered at for a ``size`` px student: the teacher's, when it is larger."""
        return max(size, self.teacher_size)

    def resolution_at(self, epoch: int) -> int:
        """Training image side for a 0-based ``epoch`` (progressive resizing)."""
        return [size for start, size in sorted(self.resolutions) if start <= epoch][-1]

    def validate(self) -> "TrainConfig":
        """Refuse values that would fail later, with the field's name in the message."""
        if not self.data:
            raise ShituError("training needs a data folder")
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.val_every >= 1, "val_every must be >= 1"),
            (self.teacher_views >= 0, "teacher_views must be >= 0 (0: a fresh random view every time)"),
            (self.batch_classes >= 2 and self.batch_per_class >= 2,
             "batch_classes and batch_per_class must be >= 2 (triplets need positives and negatives)"),
            (bool(self.resolutions) and min(s for _, s in self.resolutions) >= 32
             and min(e for e, _ in self.resolutions) == 0,
             "resolutions must start at epoch 0 with sizes >= 32, e.g. [[0, 128], [20, 224]]"),
            (self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}"),
            (self.frozen_blocks == 0 or self.backbone != "pplcnet",
             "frozen_blocks needs an efficientnet backbone"),
            (self.optimizer in ("adamw", "sgd"), "optimizer must be adamw or sgd"),
            (self.amp in ("auto", "off", "fp16", "bf16"), "amp must be auto, off, fp16 or bf16"),
            (self.distill_kind in DISTILL_KINDS, f"distill_kind must be one of {', '.join(DISTILL_KINDS)}"),
            (self.distill_temperature >= 0, "distill_temperature must be >= 0 (0: the kind's default)"),
            (self.distill_batch >= 0, "distill_batch must be >= 0"),
            (not (self.distill_batch or self.distill_val_list) or bool(self.distill_data),
             "distill_batch and distill_val_list need distill_data (the folder of distillation photos)"),
            (not self.distill_batch or bool(self.teacher and self.distill_weight > 0),
             "distill_batch needs a teacher and distill_weight > 0"),
            (self.mix in MIX_KINDS, f"mix must be one of {', '.join(MIX_KINDS)}"),
            (self.mix_alpha >= 0, "mix_alpha must be >= 0"),
            (self.mix == "off" or self.distill_batch > 0, "mix mixes the distillation photos: set distill_batch"),
            (self.teacher_size == 0 or self.teacher_size >= 32, "teacher_size must be 0 or >= 32"),
            (self.teacher_size == 0 or bool(self.teacher and self.distill_weight > 0),
             "teacher_size needs a teacher and distill_weight > 0"),
            (self.teacher_size == 0 or self.teacher_views == 0,
             "teacher_size renders each view afresh; it cannot be combined with teacher_views"),
            (self.teacher_views == 0 or self.distill_batch == 0,
             "teacher_views caches fixed views of the products; it cannot be combined with distill_batch"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (0.05 <= self.crop_scale_min <= 1.0, "crop_scale_min must be in [0.05, 1]"),
            (self.distill_crop_scale_min == 0 or 0.05 <= self.distill_crop_scale_min <= 1.0,
             "distill_crop_scale_min must be 0 (as crop_scale_min) or in [0.05, 1]"),
            (self.metric_start_epoch >= 0, "metric_start_epoch must be >= 0"),
            (self.metric_start_epoch == 0 or (self.teacher and self.distill_weight > 0),
             "without a teacher the metric losses must start at epoch 0 (metric_start_epoch = 0)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ShituError(f"bad training config: {message}")
        return self


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    """Defaults, then the TOML file, then the non-None ``overrides``."""
    values = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ShituError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ShituError(f"config file {path} is not valid TOML: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ShituError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**{key: typed(key, value) for key, value in values.items()}).validate()


LIST_ITEMS = {  # what each element of a list setting must be
    "lists": lambda item: isinstance(item, str),
    "distill_lists": lambda item: isinstance(item, str),
    "resolutions": lambda pair: (isinstance(pair, list) and len(pair) == 2
                                 and all(isinstance(n, int) and not isinstance(n, bool) for n in pair)),
}


def typed(key: str, value):
    """``value`` as the type of the setting's default; a mistyped or non-finite value is refused by name."""
    default = getattr(TrainConfig(), key)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, list):
        item_ok = LIST_ITEMS.get(key, lambda item: True)
        ok = isinstance(value, list) and all(item_ok(item) for item in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ShituError(f"bad training config: {key} must be {type_name(key, default)}, got {value!r}")
    return value


def type_name(key: str, default) -> str:
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, list):
        names = {"resolutions": "a list of [epoch, size] pairs", "lists": "a list of file names",
                 "distill_lists": "a list of file names"}
        return names.get(key, "a list")
    return {bool: "true or false", int: "a whole number", str: "a string"}[type(default)]


def to_toml(config: TrainConfig) -> str:
    """The config as TOML (flat: strings, numbers, booleans, lists)."""
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in dataclasses.asdict(config).items())


def toml_value(value) -> str:
    """One TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
