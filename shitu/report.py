"""``shitu eval --report``: one self-contained HTML page to look at instead of reading numbers.

Everything is inlined (thumbnails as JPEG data URIs, plots as PNG data URIs, no network), so the file can
be mailed or opened anywhere. A small script marks on ``<body>`` how many of its images loaded; the
render test reads that mark from headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from shitu.errors import BadImage, ShituError
from shitu.imageio import load_rgb
from shitu.openset import point_json
from shitu.scoring import Evaluation, ScoredQuery
from shitu.index.manifest import Manifest
from shitu.index.storage import Row

THUMB_SIDE = 112
CONFUSIONS = 20
UNKNOWNS = 12
PLOTS_HINT = "pip install 'shitu[report]'"

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; text-align: left; }
tr:nth-child(even) { background: #f6f6f6; } th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.rows { display: flex; flex-wrap: wrap; gap: 10px; }
.row { display: flex; gap: 8px; align-items: flex-start; padding: 6px; border: 1px solid #e4e4e4;
       border-radius: 4px; }
figure { margin: 0; width: 128px; } figcaption { font-size: 12px; overflow-wrap: anywhere; }
figure img { width: 112px; height: 112px; object-fit: contain; background: #f0f0f0; display: block; }
.missing { width: 112px; height: 112px; background: #f0f0f0; font-size: 11px; display: flex;
           align-items: center; justify-content: center; text-align: center; color: #888; }
.wrong { color: #d1495b; } .right { color: #2a9d4b; } .note { color: #666; }
.plots img { max-width: 100%; margin: 6px 0; }
"""

IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-images-loaded", loaded);
});
"""


class Thumbnails:
    """Small JPEG data URIs, each photo read once; a photo that cannot be read becomes a note."""

    def __init__(self, side: int = THUMB_SIDE):
        self.side, self.cache = side, {}

    def figure(self, path: Path, caption: str) -> str:
        uri = self.uri(path)
        caption = f"<figcaption>{caption}</figcaption>"
        if uri is None:
            return f'<figure><div class="missing">photo not found<br>{esc(path.name)}</div>{caption}</figure>'
        return f'<figure title="{esc(path)}"><img src="{uri}" alt="{esc(path.name)}">{caption}</figure>'

    def uri(self, path: Path) -> str | None:
        if path not in self.cache:
            try:
                image = load_rgb(path, self.side)
            except BadImage:
                self.cache[path] = None
            else:
                image.thumbnail((self.side, self.side))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=70)
                self.cache[path] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
        return self.cache[path]


def esc(value) -> str:
    return html.escape(str(value))


def table(columns: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(v)}</td>'
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def recall_at_k(known: list[ScoredQuery], most: int = 10) -> dict[int, float]:
    """recall@k for k = 1..most (fewer when the gallery is smaller)."""
    depth = min(most, max(len(q.matches) for q in known))
    return {k: float(np.mean([any(m.label == q.item.label for m in q.matches[:k]) for q in known]))
            for k in range(1, depth + 1)}


def per_label(known: list[ScoredQuery]) -> list[list]:
    """Rows of label, queries, right, recall@1 and what it is most often taken for, worst first."""
    groups = defaultdict(list)
    for query in known:
        groups[query.item.label].append(query)
    rows = []
    for label, queries in groups.items():
        right = sum(q.correct for q in queries)
        mistaken = Counter(q.matches[0].label for q in queries if not q.correct and q.matches).most_common(1)
        rows.append([label, len(queries), right, right / len(queries),
                     f"{mistaken[0][0]} ({mistaken[0][1]})" if mistaken else ""])
    rows.sort(key=lambda r: (r[3], -r[1], r[0]))
    return [[r[0], r[1], r[2], f"{r[3]:.3f}", r[4]] for r in rows]


def best_of_label(vectors: np.ndarray, rows: list[Row], members: list[int], query: ScoredQuery) -> tuple[Row, float]:
    """The gallery photo among ``members`` (the query's own label) that scores highest against it."""
    scores = vectors[members] @ query.vector
    best = int(np.argmax(scores))
    return rows[members[best]], float(scores[best])


def confusions(evaluation: Evaluation, vectors: np.ndarray, rows: list[Row]) -> list[tuple]:
    """Wrong answers, worst first: by how far the wrong top-1 scored above the right label's best photo."""
    by_label = defaultdict(list)
    for position, row in enumerate(rows):
        by_label[row.label].append(position)
    found = []
    for query in evaluation.known:
        if query.matches and not query.correct and by_label.get(query.item.label):
            best = best_of_label(vectors, rows, by_label[query.item.label], query)
            found.append((query.score - best[1], query, best))
    found.sort(key=lambda item: -item[0])
    return found[:CONFUSIONS]


def gallery_path(root: str, relpath: str) -> Path:
    return Path(root) / relpath


def require_file_name(out: Path) -> Path:
    """Where the report goes: a file, not a folder (checked before any photo is embedded)."""
    if out.is_dir():
        raise ShituError(f"--report {out} is a folder: give a file name such as report.html")
    return out


def write_report(out: Path, evaluation: Evaluation, index, title: str = "shitu evaluation") -> Path:
    """Write the HTML report for ``evaluation`` (searched with ``index``, a ``shitu.index.Index``) to ``out``."""
    out = require_file_name(Path(out))
    snapshot = index.read(checked=True, with_vectors=True)
    order = {row_id: n for n, row_id in enumerate(snapshot.ids.tolist())}
    rows = [snapshot.rows[row_id] for row_id in sorted(order, key=order.get)]
    root, thumbs = snapshot.manifest.gallery_root, Thumbnails()
    recalls = recall_at_k(evaluation.known)
    parts = [*header(title, index.directory, snapshot.manifest, rows, evaluation),
             *metrics_section(evaluation, recalls), *open_set_section(evaluation),
             *plots_section(evaluation, recalls),
             "<h2>Recall@1 per label, worst first</h2>",
             table(["label", "queries", "right", "recall@1", "most often taken for"], per_label(evaluation.known),
                   {1, 2, 3}),
             *confusions_section(evaluation, snapshot.vectors, rows, root, thumbs),
             *unknowns_section(evaluation, root, thumbs)]
    page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{esc(title)}</title><style>{STYLE}</style><script>{IMAGE_CHECK}</script></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ShituError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return out


def header(title: str, directory, manifest: Manifest, rows, evaluation: Evaluation) -> list[str]:
    """The title and one line on what was measured: index, model, gallery and query counts, time."""
    known, unknown = evaluation.known, evaluation.unknown
    return [f"<h1>{esc(title)}</h1>",
            f'<p class="note">index {esc(directory)} &middot; model {esc(manifest.model_name)} '
            f'{esc(manifest.model_version)} &middot; {len(rows)} gallery photos of '
            f'{len(set(r.label for r in rows))} labels &middot; {len(known)} known queries'
            + (f" &middot; {len(unknown)} unknown queries" if unknown else "")
            + f' &middot; {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}</p>']


def metrics_section(evaluation: Evaluation, recalls: dict) -> list[str]:
    figures = [[name, f"{value:.4f}"] for name, value in evaluation.metrics.items()
               if name not in ("queries", "lone_queries")]
    parts = ["<h2>Metrics</h2>", table(["metric", "value"], figures, {1}),
             table(["k"] + [str(k) for k in recalls], [["recall@k"] + [f"{v:.3f}" for v in recalls.values()]],
                   set(range(1, len(recalls) + 1)))]
    if evaluation.lone_queries:
        parts.append(f'<p class="note">{evaluation.lone_queries} known queries left out: their label is not '
                     f"in the gallery.</p>")
    return parts


def open_set_section(evaluation: Evaluation) -> list[str]:
    """The four fractions at the chosen threshold, when there were unknown queries."""
    chosen = evaluation.chosen
    if chosen is None:
        return []
    point = point_json(chosen)
    return [f"<h2>Open set: threshold {chosen.threshold:.4f}</h2>",
            table(["at this threshold", "fraction"],
                  [["known answered right", f'{point["known_right"]:.3f}'],
                   ["known answered wrong", f'{point["known_wrong"]:.3f}'],
                   ["known rejected", f'{point["known_rejected"]:.3f}'],
                   ["unknown rejected", f'{point["unknown_rejected"]:.3f}'],
                   ["balanced accuracy", f'{point["balanced_accuracy"]:.3f}'],
                   ["area under known-right vs unknown-rejected", f"{evaluation.curve.auc():.3f}"]], {1})]


def plots_section(evaluation: Evaluation, recalls: dict) -> list[str]:
    """Score histograms, recall@k and the threshold curve as inlined PNGs; without matplotlib, how to get them."""
    from shitu import reportplots

    plt = reportplots.pyplot()
    if plt is None:
        return ["<h2>Plots</h2>",
                f'<p class="note">The plots (score histograms, recall@k, threshold curve) need matplotlib: '
                f"<code>{esc(PLOTS_HINT)}</code>, then run the same <code>shitu eval --report</code> again.</p>"]
    known, chosen = evaluation.known, evaluation.chosen
    pictures = [reportplots.score_histograms(plt, [q.score for q in known if q.correct],
                                             [q.score for q in known if not q.correct],
                                             [q.score for q in evaluation.unknown],
                                             chosen.threshold if chosen else None),
                reportplots.recall_curve(plt, recalls)]
    if chosen is not None:
        pictures.append(reportplots.threshold_curve(plt, evaluation.curve, chosen))
    names = ["top-1 scores", "recall at k", "threshold curve"]
    return ["<h2>Plots</h2>", '<div class="plots">' + "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in zip(names, pictures)) + "</div>"]


def confusions_section(evaluation: Evaluation, vectors, rows, root: str, thumbs: Thumbnails) -> list[str]:
    """The worst wrong answers as rows of thumbnails: query, wrong top-1, the right label's best photo."""
    worst = confusions(evaluation, vectors, rows)
    parts = [f"<h2>Worst confusions ({len(worst)} of {sum(not q.correct for q in evaluation.known)} wrong "
             f"answers)</h2>",
             '<p class="note">Query; the wrong top-1; the right label\'s best gallery photo. Worst first: '
             "by how far the wrong photo scored above the right one.</p>", '<div class="rows">']
    for margin, query, (right_row, right_score) in worst:
        top = query.matches[0]
        parts.append('<div class="row">'
                     + thumbs.figure(query.item.path, f"query: {esc(query.item.label)}<br>{esc(query.item.path.name)}")
                     + thumbs.figure(gallery_path(root, top.path),
                                     f'<span class="wrong">top-1: {esc(top.label)}</span><br>score {top.score:.4f}')
                     + thumbs.figure(gallery_path(root, right_row.path),
                                     f'<span class="right">best {esc(right_row.label)}</span><br>'
                                     f"score {right_score:.4f}, {margin:.4f} behind")
                     + "</div>")
    return parts + ["</div>"]


def unknowns_section(evaluation: Evaluation, root: str, thumbs: Thumbnails) -> list[str]:
    """The unknown photos that look most like something in the gallery, and whether they were rejected."""
    if not evaluation.unknown:
        return []
    chosen = evaluation.chosen
    parts = ["<h2>Unknown queries with the highest scores</h2>",
             '<p class="note">Products not in the gallery that look most like something in it.</p>',
             '<div class="rows">']
    for query in sorted(evaluation.unknown, key=lambda q: -q.score)[:UNKNOWNS]:
        top = query.matches[0]
        verdict = "" if chosen is None else (" (rejected)" if query.score < chosen.threshold else
                                             ' <span class="wrong">(answered)</span>')
        parts.append('<div class="row">'
                     + thumbs.figure(query.item.path, f"unknown: {esc(query.item.label or query.item.relpath)}")
                     + thumbs.figure(gallery_path(root, top.path),
                                     f"top-1: {esc(top.label)}<br>score {top.score:.4f}{verdict}")
                     + "</div>")
    return parts + ["</div>"]
