"""``check`` and ``--repair`` of a Milvus gallery: every way it can be wrong that Milvus lets us see.

Rows without vectors and vectors without rows, the folder store's worst case, cannot happen here: one
entity holds both and the vector field is not nullable. What can: a missing alias, an interrupted change,
a path stored twice, vectors that are not unit length (Milvus accepts NaN), counts that disagree with
the manifest, a vector field or index of another dimension or metric, leftover generations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shitu.errors import ShituError
from shitu.index.findings import MODEL_NOT_CHECKED, NORM_TOLERANCE, Findings
from shitu.index.milvus import MilvusSnapshot, MilvusStore, has_manifest, show
from shitu.index.milvus_url import no_gallery


@dataclass
class GalleryFindings(Findings):
    """``Findings`` of a gallery: its leftovers are generations (collection names), and ``orphan`` is a
    complete generation the alias should name (the alias is missing)."""

    orphan: str | None = None


def inspect(store: MilvusStore, model=None) -> GalleryFindings:
    """Every way a Milvus gallery can be wrong that Milvus lets us see.

    Rows without vectors and vectors without rows, the FAISS store's worst case, cannot happen here:
    one entity holds both and the vector field is not nullable. ``model`` (a ``sha256`` and a
    ``describe()``) or None is compared by sha256, as the folder store's check does, with the manifest of
    the generation inspected: the orphan's where the alias is missing, so the right model is no mismatch.
    """
    findings = GalleryFindings()
    live = store.live()
    if live is None:
        complete = [name for _, name in sorted(store.generations().items()) if has_manifest(store, name)]
        if not complete:
            raise no_gallery(store.url)
        findings.orphan = complete[-1]
        findings.problem(f"alias {store.url.collection} is missing; {complete[-1]} is the newest complete "
                         f"generation", repairable=True)
        live = complete[-1]
    try:
        snapshot = MilvusSnapshot(store, live, store.manifest_of(live))
    except ShituError as exc:
        findings.problem(str(exc))
        return findings
    store.ensure_loaded(live)
    m = snapshot.manifest
    if model is None:
        findings.notes.append(MODEL_NOT_CHECKED)
    elif m.model_sha256 != model.sha256:  # the same bytes make vectors of the manifest's size
        findings.problem(f"gallery was built with model {m.model_name} {m.model_version} (sha256 "
                         f"{m.model_sha256[:12]}), not with {model.describe()}; its vectors cannot be "
                         f"reused: rebuild it with 'shitu build-index'")
    check_schema(store, snapshot, findings)
    pending, above = snapshot.unfinished()
    if pending:
        findings.problem(f"an interrupted change is pending ({len(pending.get('delete', []))} deletes, "
                         f"{len(pending.get('relabel', {}))} relabels)", repairable=True)
    elif above:
        findings.problem(f"{len(above)} rows above next_id {m.next_id} were left by an interrupted add "
                         f"(ids {show(above)})", repairable=True)
    check_rows(snapshot, findings)
    keep = {live, store.previous_live(live)}
    findings.leftovers = store.leftovers(keep)
    for name in findings.leftovers:
        findings.notes.append(f"leftover collection {name} from an interrupted or old build (harmless; "
                              f"'shitu check --repair' drops it)")
    return findings


def check_schema(store: MilvusStore, snapshot: MilvusSnapshot, findings: Findings):
    """The vector field has the manifest's dimension and an inner-product index."""
    fields = {f["name"]: f for f in store.call("describe_collection", snapshot.collection)["fields"]}
    dim = int(fields.get("vector", {}).get("params", {}).get("dim", 0))
    if dim != snapshot.manifest.embedding_size:
        findings.problem(f"{snapshot.collection} holds {dim}-d vectors, the manifest says "
                         f"{snapshot.manifest.embedding_size}-d; rebuild it with 'shitu build-index'")
    index = store.call("describe_index", snapshot.collection, "vector") or {}
    if index.get("metric_type") != "IP":
        findings.problem(f"{snapshot.collection}'s vector index uses metric {index.get('metric_type')!r}, not "
                         f"inner product; rebuild it with 'shitu build-index'")


def check_rows(snapshot: MilvusSnapshot, findings: Findings):
    """Counts against the manifest, one row per path, and finite unit-length vectors."""
    paths, labels, not_unit, count = {}, set(), [], 0
    for entity in snapshot.iterate(["id", "path", "label", "vector"], batch=1024):
        count += 1
        labels.add(entity["label"])
        paths.setdefault(entity["path"], []).append(int(entity["id"]))
        norm = float(np.linalg.norm(np.asarray(entity["vector"], dtype=np.float64)))
        if not abs(norm - 1.0) <= NORM_TOLERANCE:  # also catches NaN, which Milvus accepts
            not_unit.append(int(entity["id"]))
    m = snapshot.manifest
    if (m.count, m.labels) != (count, len(labels)):
        findings.problem(f"manifest says {m.count} images of {m.labels} labels, the collection holds "
                         f"{count} of {len(labels)}", repairable=True)
    repeated = {path: ids for path, ids in paths.items() if len(ids) > 1}
    if repeated:
        ids = sorted(i for group in repeated.values() for i in group)
        findings.problem(f"{len(repeated)} paths are stored more than once (ids {show(ids)}); repair keeps "
                         f"the newest row of each", repairable=True)
    if not_unit:
        findings.problem(f"{len(not_unit)} stored vectors are not unit length (ids {show(not_unit)}); remove "
                         f"those files and add them again, or rebuild with 'shitu build-index'")


def repair(store: MilvusStore, findings: GalleryFindings) -> list[str]:
    """Fix what ``inspect`` marked repairable, then drop leftover generations."""
    done = []
    if findings.orphan:
        store.call("create_alias", findings.orphan, store.url.collection)
        done.append(f"pointed alias {store.url.collection} at {findings.orphan}")
    if findings.repairable():
        snapshot = store.snapshot()
        done += snapshot.recover()
        done += drop_duplicate_paths(snapshot)
        fresh = {"count": snapshot.count(), "labels": len(snapshot.label_counts())}
        if (snapshot.manifest.count, snapshot.manifest.labels) != (fresh["count"], fresh["labels"]):
            snapshot.commit(fresh, new_generation=True)
            done.append(f"counted {fresh['count']} images of {fresh['labels']} labels into the manifest")
    live = store.live()
    for name in store.leftovers({live, store.previous_live(live)}) if live else []:
        store.call("drop_collection", name)
        done.append(f"dropped leftover collection {name}")
    return done


def drop_duplicate_paths(snapshot: MilvusSnapshot) -> list[str]:
    """Keep the newest row of each path stored more than once (a replace cut short)."""
    paths = {}
    for entity in snapshot.iterate(["id", "path"]):
        paths.setdefault(entity["path"], []).append(int(entity["id"]))
    stale = sorted(i for ids in paths.values() if len(ids) > 1 for i in sorted(ids)[:-1])
    if not stale:
        return []
    snapshot.delete(stale)
    return [f"deleted {len(stale)} older rows of paths stored twice (ids {show(stale)})"]
