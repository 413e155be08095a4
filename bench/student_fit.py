"""How much of its teacher a distilled student has learnt, on product photos and on natural photos, and how
many directions its features use.

For each checkpoint (``last.pt``, ``best.pt`` or a copy), on clean views of ``--count`` photos of each set:
- fit: the mean cosine between the student's projection and the teacher's features, both centred on the
  batch (``--batch`` photos), as the cosine distillation term computes it in training: live weights, batch statistics;
- rank: the participation ratio (sum s^2)^2 / sum s^4 of the singular values s of the centred features, of
  the student's embedding, of its projection and of the teacher, on the natural photos. It counts the
  directions the features really vary along (1: all photos on one line; at most the feature size).

Why: the training log's distillation term averages over whole batches, so a student that fits the
products and not the natural photos, or fits only the teacher's strongest few directions, looks as if it
were learning. Run 12 was such a student: 0.50 on products, 0.06 on natural photos, rank 9 against the
teacher's 115 (docs/training.md, stop 17). No timing peers: a diagnostic.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, parse, parser, report  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def participation_ratio(features) -> float:
    import torch

    power = torch.linalg.svdvals(features - features.mean(0)) ** 2
    return float(power.sum() ** 2 / (power ** 2).sum())


def measure(path: Path, sets: dict, batch_size: int) -> dict:
    """Fit per photo set and ranks on the natural photos of one checkpoint; ``sets``: name -> the photos,
    decoded and normalised once for every checkpoint."""
    import torch
    import torch.nn.functional as F

    from shitu.errors import ShituError
    from shitu.train.checkpoint import build_model, load_teacher, read_checkpoint
    from shitu.train.config import TrainConfig

    state = read_checkpoint(path)
    config = TrainConfig(**state["config"])
    if not state.get("projection") or not config.teacher:
        raise ShituError(f"{path} was trained without a teacher: it has no projection to measure")
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.train()  # batch statistics, as in training
    model.backbone.dropout.eval()  # but no dropout, so the figures do not depend on chance
    teacher = load_teacher(config.teacher, config.distill_kind == "logits")
    projection = torch.nn.Linear(config.embedding_size, teacher.feature_size)
    projection.load_state_dict(state["projection"])
    result = {"checkpoint": str(path), "epoch": state.get("epoch", -1) + 1, "distill_kind": config.distill_kind}
    with torch.no_grad():
        for name, images in sets.items():
            fits, parts = [], {"embedding": [], "projection": [], "teacher": []}
            for start in range(0, len(images) - batch_size + 1, batch_size):
                batch = images[start:start + batch_size]
                embedding = model(batch)
                projected, target = projection(embedding), teacher(batch).float()
                fits.append(F.cosine_similarity(projected - projected.mean(0), target - target.mean(0)).mean())
                for key, value in zip(parts, (embedding, projected, target)):
                    parts[key].append(value)
            result[f"fit {name}"] = round(float(torch.stack(fits).mean()), 3)
            if name == "natural":
                result.update({f"rank {key}": round(participation_ratio(torch.cat(values)), 1)
                               for key, values in parts.items()})
    return result


def photos(root: Path, list_file: str | None, count: int, seed: int, size: int):
    """``count`` photos drawn from the folder (or its list file), decoded at ``size`` and normalised."""
    import torch

    from shitu.train.augment import normalize
    from shitu.train.data import decode_all, read_records

    items = read_records(str(root), [list_file] if list_file else [])
    random.Random(seed).shuffle(items)
    return normalize(torch.from_numpy(decode_all(items[:count], size, torch.get_num_threads())))


def main(argv=None):
    args = parser("student_fit", __doc__)
    args.add_argument("checkpoints", type=Path, nargs="+", help="training checkpoints (.pt) to measure")
    args.add_argument("--products", type=Path, default=SHARED / "grocery", help="product photos (default: %(default)s)")
    args.add_argument("--products-list", default=None, help="list file below --products (default: every photo)")
    args.add_argument("--natural", type=Path, default=SHARED / "distill", help="natural photos (default: %(default)s)")
    args.add_argument("--natural-list", default=None, help="list file below --natural (default: every photo)")
    args.add_argument("--count", type=int, default=384, help="photos per set (default: %(default)s)")
    args.add_argument("--batch", type=int, default=64, help="photos centred together: the training batch "
                      "(default: %(default)s)")
    args.add_argument("--size", type=int, default=96, help="image side in px (default: %(default)s)")
    args.add_argument("--threads", type=int, default=2)
    args.add_argument("--seed", type=int, default=0, help="which photos are drawn")
    args = parse(args, argv, quick={"count": 32, "batch": 16, "size": 48})
    if args.batch < 2 or args.count < args.batch:
        sys.exit("--batch must be at least 2 and --count at least --batch")
    import torch

    from shitu.errors import ShituError

    torch.set_num_threads(args.threads)
    try:
        sets = {"products": photos(args.products, args.products_list, args.count, args.seed, args.size),
                "natural": photos(args.natural, args.natural_list, args.count, args.seed, args.size)}
        if min(len(images) for images in sets.values()) < args.batch:
            sys.exit(f"each photo set needs at least --batch ({args.batch}) photos")
        results = [measure(path, sets, args.batch) for path in args.checkpoints]
    except ShituError as exc:
        sys.exit(str(exc))
    columns = ["checkpoint", "epoch", "kind", "fit products", "fit natural", "rank embedding", "rank projection",
               "rank teacher"]
    rows = [["/".join(Path(r["checkpoint"]).parts[-2:]), r["epoch"], r["distill_kind"], r["fit products"], r["fit natural"],
             r["rank embedding"], r["rank projection"], r["rank teacher"]] for r in results]
    report("student_fit", args.json, f"Student against teacher, {args.size} px, {len(sets['natural'])} natural photos",
           [("", columns, rows)], {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results},
           notes=["fit: mean centred cosine of projection and teacher (1 = the teacher's function)",
                  "rank: participation ratio of centred features on the natural photos"])


if __name__ == "__main__":
    main()
