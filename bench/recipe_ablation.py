"""What each part of the training recipe adds, on the products it trained on and on products it never saw.

PP-LCNet-2.5x is trained from scratch once per variant: the recipe (cosine distillation from an
ImageNet EfficientNet-Lite0, ArcMargin and triplet losses from half-way, a low resolution for the first
half), then the same with one part taken out. Every variant trains on the same photos in the same
order (one seed) of all classes but ``--hold-out`` of them, and is measured twice with one protocol,
queries from ``--val-list`` against the training photos of their classes as the gallery:
- seen: the classes it trained on (what ``shitu train`` validates);
- held out: the classes it never saw, as a user's own products are (generality).
The ImageNet features of EfficientNet-Lite0, untrained, are measured the same way as the reference.

These are short runs from scratch: they rank the parts at this budget, they are not the shipped model's
figures (that one was trained for hundreds of epochs, with restarts).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, parse, parser, report  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "grocery"

VARIANTS = {  # name -> TrainConfig fields that differ from the recipe
    "recipe": {},
    "no distillation": {"teacher": "", "metric_start_epoch": 0},
    "no triplet loss": {"triplet_weight": 0.0},
    "distillation only (no ArcMargin, no triplet)": {"arc_weight": 0.0, "triplet_weight": 0.0},
    "one resolution throughout": {"resolutions": "final"},
}


def grocery_lists(data: Path, folder: Path) -> tuple[list[str], str]:
    """The shared grocery photos' ``train`` and ``val`` splits as list files (``test`` is never used)."""
    from shitu.grocery import write_list

    return [str(write_list(data, "train", folder / "train.txt"))], str(write_list(data, "val", folder / "val.txt"))


def write_subset(items, labels: set[str], path: Path) -> str:
    """A list file of the ``items`` whose label is in ``labels``."""
    path.write_text("".join(f"{i.relpath}\t{i.label}\n" for i in items if i.label in labels), encoding="utf-8")
    return str(path)


class Split:
    """The photos of one group of classes: the training photos (gallery) and the queries."""

    def __init__(self, name: str, train: list, queries: list | None):
        self.name, self.train = name, train
        self.queries = queries if queries else train  # no val list: leave-one-out among training photos

    def recall(self, trainer, network, size: int) -> float:
        from shitu.metrics import recall_at_1_of_vectors

        same = self.queries is self.train
        gallery = trainer.embed(network, trainer.cache(self.train, size, f"{self.name}-gallery"))
        queries = gallery if same else trainer.embed(network, trainer.cache(self.queries, size, f"{self.name}-queries"))
        return recall_at_1_of_vectors(queries, [i.label for i in self.queries], gallery,
                                      [i.label for i in self.train], leave_one_out=same)


def main(argv=None):
    args = parser("recipe_ablation", __doc__)
    args.add_argument("data", type=Path, nargs="?", default=DEFAULT_DATA,
                      help="photos: the shared grocery folder (its train/val splits are used) or any gallery "
                      "(default: %(default)s)")
    args.add_argument("--lists", nargs="*", default=None, help="training list files (default: grocery's "
                      "train split, or every photo of a gallery folder)")
    args.add_argument("--val-list", default=None, help="query photos (default: grocery's val split; none: "
                      "leave-one-out among the training photos)")
    args.add_argument("--hold-out", type=int, default=21, help="classes never trained on (default: %(default)s)")
    args.add_argument("--epochs", type=int, default=4, help="epochs per variant (default: %(default)s)")
    args.add_argument("--size", type=int, default=112, help="final training and evaluation side "
                      "(default: %(default)s)")
    args.add_argument("--start-size", type=int, default=80, help="side for the first half of the epochs "
                      "(default: %(default)s)")
    args.add_argument("--batch-classes", type=int, default=8, help="classes per batch, 4 photos each")
    args.add_argument("--teacher", default="efficientnet_lite0", choices=["efficientnet_lite0",
                      "efficientnet_lite2"], help="ImageNet teacher and reference; a fine-tuned one would have "
                      "seen the held-out classes (default: %(default)s)")
    args.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                      help="which to train (default: all)")
    args.add_argument("--seed", type=int, default=0, help="held-out classes and training order")
    args = parse(args, argv, quick={"data": REPO / "tests" / "synthetic" / "demo", "hold_out": 4, "epochs": 2, "size": 48,
                                    "start_size": 32, "batch_classes": 2,
                                    "variants": ["recipe", "no distillation"]})
    if not args.data.is_dir():
        sys.exit(f"data folder not found: {args.data} (the shared grocery photos, or pass a gallery folder)")
    from shitu.errors import ShituError
    from shitu.grocery import pick_held_out
    from shitu.nn.teacher import Teacher
    from shitu.train.config import TrainConfig
    from shitu.train.data import read_records
    from shitu.train.loop import Trainer

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        lists, val_list = args.lists, args.val_list
        if lists is None and (args.data / "classes.csv").exists():
            lists, default_val = grocery_lists(args.data, scratch)
            val_list = val_list or default_val
        try:
            train = read_records(str(args.data), lists or [])
            queries = read_records(str(args.data), [val_list]) if val_list else []
        except ShituError as exc:
            sys.exit(str(exc))
        names = sorted({i.label for i in train})
        if not 0 < args.hold_out < len(names) - 1:
            sys.exit(f"--hold-out must be between 1 and {len(names) - 2} for {len(names)} classes")
        held = pick_held_out(names, args.hold_out, args.seed)
        seen = set(names) - held
        splits = [Split(name, [i for i in train if i.label in group], [i for i in queries if i.label in group])
                  for name, group in (("seen", seen), ("held out", held))]
        half = args.epochs // 2
        recipe = dict(data=str(args.data), lists=[write_subset(train, seen, scratch / "seen.txt")],
                      epochs=args.epochs, resolutions=[[0, args.start_size], [half, args.size]],
                      metric_start_epoch=half, arc_weight=0.5, triplet_weight=0.5, distill_weight=2.0,
                      teacher=args.teacher, batch_classes=args.batch_classes, warmup_epochs=1,
                      val_every=args.epochs, seed=args.seed)
        results = []
        for name in args.variants:
            fields = {**recipe, **VARIANTS[name]}
            if fields["resolutions"] == "final":
                fields["resolutions"] = [[0, args.size]]
            config = TrainConfig(**fields).validate()
            print(f"{name}: training {args.epochs} epochs on {len(seen)} classes", file=sys.stderr)
            trainer = Trainer(config, scratch / f"run{len(results)}", device="cpu")
            started = time.time()
            trainer.fit()
            seconds = time.time() - started
            network = trainer.eval_model(args.size)
            results.append({"variant": name, "changes": VARIANTS[name], "train_seconds": round(seconds, 1),
                            **{s.name: s.recall(trainer, network, args.size) for s in splits}})
            print(f"{name}: recall@1 seen {results[-1]['seen']:.3f}, held out {results[-1]['held out']:.3f}",
                  file=sys.stderr)  # kept in the log if a long run is stopped before the table
        reference = Teacher(args.teacher)
        results.append({"variant": f"{args.teacher} ImageNet features, untrained, {args.size} px", "changes": {},
                        "train_seconds": 0.0, **{s.name: s.recall(trainer, reference, args.size) for s in splits}})
    rows = [[r["variant"], f"{r['seen']:.3f}", f"{r['held out']:.3f}", f"{r['train_seconds']:.0f}"]
            for r in results]
    counts = {s.name: (len({i.label for i in s.train}), len(s.queries)) for s in splits}
    report("recipe_ablation", args.json, f"Recipe ablation: PP-LCNet-2.5x from scratch, {args.epochs} epochs, "
           f"{args.start_size}->{args.size} px",
           [("", ["variant", f"recall@1 seen ({counts['seen'][0]} classes, {counts['seen'][1]} queries)",
                  f"recall@1 held out ({counts['held out'][0]} classes, {counts['held out'][1]} queries)",
                  "training s"], rows)],
           {"settings": {k: str(v) for k, v in vars(args).items()}, "held_out_classes": sorted(held),
            "results": results},
           notes=["queries against the training photos of their own classes; "
                  + (f"queries: {Path(val_list).name}" if queries else "leave-one-out (no val list)")])


if __name__ == "__main__":
    main()
