"""The open-set protocol: how well each model's scores tell products in the gallery from products not in it.

Gallery: the ``train`` photos of the Grocery classes that are not held out (60 of 81 with ``--hold-out 21
--seed 0``, the draw ``python -m shitu.grocery`` makes); known queries: the ``test`` photos of those 60;
unknown queries: the ``test`` photos of the 21 held out, and separately the Caltech-101 photos in
``--caltech`` (other objects altogether). For each model and unknown set it chooses a threshold as
``shitu calibrate`` does (best balanced accuracy, or ``--target-unknown-rejection``) and reports the four
fractions there and the area under the curve; then it applies the threshold chosen on the held-out
groceries to the Caltech photos, because a calibrated threshold meets other unknowns than it was chosen on.

Indexes go to ``--work`` (default: a temporary folder), so a rerun with the same folder embeds only the
queries again.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, parse, parser, report  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "grocery"
DEFAULT_CALTECH = REPO.parent / "shared" / "data" / "unseen" / "caltech50" / "query"
LITE0 = REPO.parent / "runs" / "teachers" / "efficientnet_lite0-160.onnx"


def grocery_sets(data: Path, hold_out: int, seed: int, folder: Path) -> dict:
    """Gallery, known and held-out unknown photos as GalleryItem lists (list files written to ``folder``)."""
    from shitu.gallery import read_gallery
    from shitu.grocery import class_table, held_out_classes, write_list

    held = held_out_classes(data, hold_out, seed)
    seen = {row["name"] for row in class_table(data)} - held
    lists = {"gallery": ("train", seen), "known": ("test", seen), "held-out groceries": ("test", held)}
    return {name: read_gallery(data, write_list(data, split, folder / f"{name}.txt", classes))
            for name, (split, classes) in lists.items()}


def demo_sets() -> dict:
    """``--quick``: the demo gallery with its last 3 products as the unknowns."""
    from shitu.gallery import read_gallery

    gallery = read_gallery(REPO / "gallery" / "demo")
    queries = read_gallery(REPO / "gallery" / "queries", REPO / "gallery" / "queries" / "labels.tsv")
    unknown_labels = sorted({item.label for item in gallery})[-3:]
    return {"gallery": [i for i in gallery if i.label not in unknown_labels],
            "known": [i for i in queries if i.label not in unknown_labels],
            "held-out groceries": [i for i in queries if i.label in unknown_labels]}


def measure(model: str, sets: dict, unknown_sets: dict, work: Path, target: float | None) -> list[dict]:
    """One row per unknown set for ``model``, plus the held-out threshold applied to the other sets."""
    import numpy as np

    from shitu.embed import resolve_model
    from shitu.index import Index
    from shitu.openset import choose_threshold, open_set_curve, rule_name
    from shitu.scoring import score_queries

    path = resolve_model(model)
    index = work / f"index-{path.stem}"
    recognizer = Index(index, path)
    recognizer.build(sets["gallery"])
    known = score_queries(recognizer, sets["known"], 1, "known")
    known_scores, correct = [q.score for q in known], [q.correct for q in known]
    rows, first = [], None
    for name, items in unknown_sets.items():
        unknown = [q.score for q in score_queries(recognizer, items, 1, name)]
        curve = open_set_curve(known_scores, correct, unknown)
        chosen = choose_threshold(curve, target)
        rows.append({"model": model if model in ("fp32", "int8") else path.name, "unknowns": name, "rule": rule_name(target),
                     "threshold": chosen.threshold, "known_right": chosen.known_right,
                     "known_wrong": chosen.known_wrong, "known_rejected": chosen.known_rejected,
                     "unknown_rejected": chosen.unknown_rejected, "auc": curve.auc(),
                     "recall@1": float(np.mean(correct)), "known_queries": len(known_scores),
                     "unknown_queries": len(unknown)})
        if first is None:
            first = (name, chosen)
        else:
            rows.append({**rows[-1], "unknowns": f"{name} at the {first[0]} threshold",
                         "threshold": first[1].threshold, "known_right": first[1].known_right,
                         "known_wrong": first[1].known_wrong, "known_rejected": first[1].known_rejected,
                         "unknown_rejected": float(np.mean(np.array(unknown) < first[1].threshold))})
    return rows


def main(argv=None):
    args = parser("open_set", __doc__)
    args.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Grocery Store Dataset folder")
    args.add_argument("--caltech", default=str(DEFAULT_CALTECH), help="a second set of unknown photos "
                      "(label folders or loose photos); '' for none")
    args.add_argument("--model", action="append", help="model to measure, repeatable (default: fp32, and the "
                      f"ImageNet EfficientNet-Lite0 features at {LITE0} when that file exists)")
    args.add_argument("--hold-out", type=int, default=21)
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--target-unknown-rejection", type=float, default=None)
    args.add_argument("--work", type=Path, default=None, help="folder for list files and indexes")
    options = parse(args, argv, {})
    from shitu.scoring import read_unknowns

    models = options.model or (["fp32"] + ([str(LITE0)] if LITE0.is_file() and not options.quick else []))
    work = options.work or Path(tempfile.mkdtemp(prefix="open_set_"))
    work.mkdir(parents=True, exist_ok=True)
    sets = demo_sets() if options.quick else grocery_sets(options.data, options.hold_out, options.seed, work)
    unknown_sets = {"held-out groceries": sets["held-out groceries"]}
    if options.caltech and not options.quick:
        unknown_sets["caltech50"] = read_unknowns(Path(options.caltech))
    rows = [row for model in models for row in measure(model, sets, unknown_sets, work,
                                                       options.target_unknown_rejection)]
    columns = ["model", "unknowns", "threshold", "known right", "known wrong", "known rejected",
               "unknown rejected", "AUC", "recall@1"]
    table = [[r["model"], r["unknowns"], f"{r['threshold']:.4f}", f"{r['known_right']:.3f}",
              f"{r['known_wrong']:.3f}", f"{r['known_rejected']:.3f}", f"{r['unknown_rejected']:.3f}",
              f"{r['auc']:.3f}", f"{r['recall@1']:.3f}"] for r in rows]
    sizes = {name: len(items) for name, items in sets.items()} | {n: len(i) for n, i in unknown_sets.items()}
    report("open_set", options.json, "Open-set protocol", [("", columns, table)],
           {"results": rows, "photos": sizes, "hold_out": options.hold_out, "seed": options.seed},
           [f"photos: {', '.join(f'{k} {v}' for k, v in sizes.items())}",
            f"threshold rule: {rows[0]['rule']}; AUC: area under known-right against unknown-rejected"])


if __name__ == "__main__":
    main()
