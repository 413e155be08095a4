"""The ``shitu`` command line: parse flags, call the library, print. No logic of its own."""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.core
from rich.markup import escape

from shitu.errors import ShituError, UsageError
from shitu.progress import TerminalReporter, printable, printable_values


def as_written(help_text: str) -> str:
    """Help text whose brackets stay literal: typer renders help as rich markup, where ``[/COLLECTION]``
    closes a tag (a crash) and ``[milvus]`` opens one (hidden); unless TYPER_USE_RICH=0 makes it plain text."""
    return escape(help_text) if getattr(typer.core, "HAS_RICH", True) else help_text


app = typer.Typer(help="Recognise products in photos: PP-LCNet-2.5x embeddings, FAISS search, SQLite labels.",
                  add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

INDEX = typer.Option(Path("index"), "--index", help="Index directory.")
STORE = typer.Option(None, "--store", help=as_written(
    "Keep the index in Milvus instead of --index: milvus://[USER:PASSWORD@]HOST[:PORT]/COLLECTION (a server) or "
    "milvus-lite:PATH.db[/COLLECTION] (embedded Milvus Lite); needs pip install 'shitu[milvus]'."))
MODEL = typer.Option(None, "--model", help="ONNX model file, or 'fp32' / 'int8' for the shipped models "
                     "(default: the model the index was built with, else the shipped fp32 model).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")
UNKNOWN = typer.Option(None, "--unknown", help="Photos of products that are NOT in the gallery (label folders, "
                       "loose photos, or the root of --unknown-list): measures what each threshold rejects.")
UNKNOWN_LIST = typer.Option(None, "--unknown-list", help="List file of unknown photos, paths relative to "
                            "--unknown; repeatable.")
TARGET = typer.Option(None, "--target-unknown-rejection", help="Choose the lowest threshold that rejects this "
                      "share of unknown photos (0..1; default: the best balanced accuracy).")


def finite(param: typer.CallbackParam, value: Optional[float]) -> Optional[float]:
    """Every float flag: NaN or infinity would silently make every comparison false."""
    if value is not None and not math.isfinite(value):
        typer.echo(f"error: {param.opts[0]} must be a finite number, got {value}", err=True)
        raise typer.Exit(1)
    return value


def guarded(command):
    """Turn user errors into one line on stderr and exit code 1, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UsageError as exc:  # as for a missing option: the usage, the message, exit 2
            if isinstance(kwargs.get("ctx"), typer.Context):
                kwargs["ctx"].fail(str(exc))
            typer.echo(printable(f"error: {exc}"), err=True)
            raise typer.Exit(2)
        except ShituError as exc:
            typer.echo(printable(f"error: {exc}"), err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130)
    return wrapper


def where(index: Path, store: str | None) -> str | None:
    """The ``--store`` a command uses; ``--index`` and ``--store`` name two places, so not both."""
    if store is not None and index != Path("index"):
        raise UsageError("give --index (an index folder) or --store (a Milvus gallery), not both")
    return store


def print_json(data):
    sys.stdout.write(json.dumps(printable_values(data), ensure_ascii=False) + "\n")


def print_table(title: str, columns: list[str], rows: list[list]):
    """Labels and paths are printed verbatim: as ``Text`` they are never read as rich markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(printable(title)))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[Text(printable(str(value))) for value in row])
    Console(highlight=False).print(table)


@app.command("build-index")
@guarded
def build_index(
    gallery: Path = typer.Argument(..., help="Gallery folder: one sub-folder of images per label."),
    index: Path = INDEX,
    store: Optional[str] = STORE,
    model: Optional[Path] = MODEL,
    index_type: str = typer.Option("auto", "--index-type", help="FAISS factory string (Flat, HNSW32, "
                                   "IVF1024,Flat), with --store a Milvus index type (FLAT, HNSW, IVF_FLAT, "
                                   "DISKANN...), or auto."),
    list_file: Optional[List[Path]] = typer.Option(None, "--list", help="List file of 'path<TAB>label' "
                                                   "lines, paths relative to GALLERY; repeatable."),
    quiet: bool = QUIET,
):
    """Embed a gallery into an index (re-embeds only new or changed files)."""
    from shitu.gallery import read_gallery
    from shitu.index import Index

    reporter = TerminalReporter(quiet)
    items = read_gallery(gallery, list_file, reporter)
    report = Index(index, model, reporter, store=where(index, store)).build(items, index_type, gallery)
    typer.echo(f"indexed {report.images} images of {report.labels} labels into {store or index} "
               f"({report.index_type}): {report.embedded} embedded, {report.reused} reused, "
               f"{report.removed} removed, {len(report.bad)} unreadable skipped", err=True)


@app.command()
@guarded
def query(
    images: List[Path] = typer.Argument(..., help="Photos to recognise."),
    index: Path = INDEX,
    store: Optional[str] = STORE,
    model: Optional[Path] = MODEL,
    topk: int = typer.Option(5, "--topk", min=1, help="Matches to list per photo."),
    threshold: Optional[float] = typer.Option(None, "--threshold", callback=finite, help="Below this cosine "
                                              "score the answer is 'unknown' (label null)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
):
    """Name the product in each photo."""
    from shitu.index import Index

    answers = Index(index, model, store=where(index, store)).query(images, topk, threshold)
    if as_json:
        print_json([answer.to_json() for answer in answers])
    else:
        for answer in answers:
            if answer.error is None:
                print_table(f"{answer.image}: {answer.label or 'unknown'}", ["rank", "label", "score", "path"],
                            [[m.rank, m.label, f"{m.score:.4f}", m.path] for m in answer.results])
    failed = [answer for answer in answers if answer.error]
    for answer in failed:
        typer.echo(printable(f"error: {answer.error}"), err=True)
    if failed:
        raise typer.Exit(1)


@app.command("eval")
@guarded
def eval_command(
    index: Path = INDEX,
    store: Optional[str] = STORE,
    model: Optional[Path] = MODEL,
    queries: Optional[Path] = typer.Option(None, "--queries", help="Query folder in the gallery layout "
                                           "(default: leave-one-out over the gallery)."),
    queries_list: Optional[List[Path]] = typer.Option(None, "--queries-list", help="List file of queries, "
                                                      "paths relative to --queries; repeatable."),
    metric: List[str] = typer.Option(["recall@1"], "--metric", help="recall@K or map@r; repeatable."),
    unknown: Optional[Path] = UNKNOWN,
    unknown_list: Optional[List[Path]] = UNKNOWN_LIST,
    target: Optional[float] = TARGET,
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML report "
                                          "(thumbnails, per-label recall, confusions, plots) to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    quiet: bool = QUIET,
):
    """Measure retrieval quality: recall@K and MAP@R; with --unknown, what each threshold does."""
    from shitu.gallery import read_gallery
    from shitu.index import Index
    from shitu.metrics import parse_metric

    metrics = list(dict.fromkeys(parse_metric(m) for m in metric))
    if queries_list and not queries:
        raise ShituError("--queries-list needs --queries, the folder its paths are relative to")
    check_open_set_flags(queries, unknown, unknown_list, target, report)
    reporter = TerminalReporter(quiet)
    items = read_gallery(queries, queries_list, reporter) if queries else None
    if unknown or report:
        return open_set_eval(index, model, items, metrics, unknown, unknown_list, target, report, as_json,
                             reporter, where(index, store))
    result = Index(index, model, reporter, store=where(index, store)).evaluate(metrics, items)
    output = {m: round(result[m], 4) for m in metrics}
    output.update(queries=result["queries"], gallery=result["gallery"])
    if as_json:
        print_json(output)
    else:
        print_table("evaluation", ["metric", "value"], [[k, v] for k, v in output.items()])


def check_open_set_flags(queries, unknown, unknown_list, target, report):
    """Refuse flag combinations before any photo is embedded."""
    if unknown_list and not unknown:
        raise ShituError("--unknown-list needs --unknown, the folder its paths are relative to")
    if target is not None and not unknown:
        raise ShituError("--target-unknown-rejection needs --unknown: photos of products not in the gallery")
    if (unknown or report) and not queries:
        raise ShituError("--unknown and --report need --queries: photos of products that are in the gallery")


def open_set_eval(index, model, items, metrics, unknown, unknown_list, target, report, as_json, reporter,
                  store=None):
    """``eval`` with unknown queries or a report: one search of every photo serves both."""
    from shitu.index import Index
    from shitu.openset import point_json, rule_name
    from shitu.scoring import read_unknowns

    unknown_items = read_unknowns(unknown, unknown_list, reporter) if unknown else None
    evaluation = Index(index, model, reporter, store=store).evaluate_open_set(items, metrics, unknown_items, target,
                                                                             report)
    output = {m: round(evaluation.metrics[m], 4) for m in metrics}
    output.update(queries=evaluation.metrics["queries"], gallery=len(evaluation.gallery_labels))
    if evaluation.curve is not None:
        chosen = point_json(evaluation.chosen)
        output["threshold"] = chosen["threshold"]
        output["open_set"] = {**evaluation.curve.to_json(), "rule": rule_name(target), "chosen": chosen}
    if report:
        note(f"wrote the report to {report}")
    if as_json:
        print_json(output)
        return
    print_table("evaluation", ["metric", "value"], [[k, v] for k, v in output.items() if k not in ("open_set",)
                                                    and k != "threshold"])
    if evaluation.curve is not None:
        chosen = output["open_set"]["chosen"]
        print_table(f"open set: threshold {chosen['threshold']:.4f} ({rule_name(target)})", ["", "fraction"],
                    [[name, f"{chosen[key]:.3f}"] for name, key in (
                        ("known answered right", "known_right"), ("known answered wrong", "known_wrong"),
                        ("known rejected", "known_rejected"), ("unknown rejected", "unknown_rejected"),
                        ("balanced accuracy", "balanced_accuracy"))]
                    + [["area under known-right vs unknown-rejected", f'{output["open_set"]["auc"]:.3f}'],
                     ["known / unknown queries", f"{evaluation.curve.known_queries} / "
                                                 f"{evaluation.curve.unknown_queries}"]])


@app.command()
@guarded
def calibrate(
    index: Path = INDEX,
    store: Optional[str] = STORE,
    model: Optional[Path] = MODEL,
    queries: Path = typer.Option(..., "--queries", help="Photos of products in the gallery (gallery layout)."),
    queries_list: Optional[List[Path]] = typer.Option(None, "--queries-list", help="List file of queries, "
                                                      "paths relative to --queries; repeatable."),
    unknown: Path = typer.Option(..., "--unknown", help="Photos of products that are NOT in the gallery "
                                 "(label folders, loose photos, or the root of --unknown-list)."),
    unknown_list: Optional[List[Path]] = UNKNOWN_LIST,
    target: Optional[float] = TARGET,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    quiet: bool = QUIET,
):
    """Choose a threshold on known and unknown photos and store it with the index; query then uses it."""
    from shitu.index.calibration import describe
    from shitu.gallery import read_gallery
    from shitu.index import Index
    from shitu.scoring import read_unknowns

    check_open_set_flags(queries, unknown, unknown_list, target, None)
    reporter = TerminalReporter(quiet)
    items = read_gallery(queries, queries_list, reporter)
    unknown_items = read_unknowns(unknown, unknown_list, reporter)
    record = Index(index, model, reporter, store=where(index, store)).calibrate(items, unknown_items, target)
    if as_json:
        print_json({"threshold": record["value"], "calibration": record})
    else:
        typer.echo(f"{store or index}: threshold {describe(record)}", err=True)


@app.command()
@guarded
def export(
    checkpoint: Optional[Path] = typer.Argument(None, help="Training checkpoint (last.pt or best.pt)."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=32, help="Input side (default: the "
                                             "run's last training resolution; 224 with --teacher)."),
    recalibrate: bool = typer.Option(False, "--recalibrate", help="Re-measure batch-norm statistics at "
                                     "the input side on the run's training images."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name stored in the metadata (default: "
                                       "PPLCNet_x2_5_shitu, or BACKBONE_shitu for a teacher run)."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version (default: epochN)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Instead of a checkpoint: export an "
                                          "ImageNet teacher's features (efficientnet_lite0 or _lite2), "
                                          "the off-the-shelf baseline to compare against."),
):
    """Export a checkpoint to ONNX with its preprocessing metadata (needs PyTorch)."""
    require_torch()
    from shitu.train.export import export_onnx, export_teacher

    if (checkpoint is None) == (teacher is None):
        raise ShituError("export needs either a CHECKPOINT or --teacher NAME (not both)")
    if teacher:
        path = export_teacher(teacher, out, input_size or 224)
    else:
        path = export_onnx(checkpoint, out, name, version, input_size, recalibrate)
    typer.echo(f"wrote {path}", err=True)


@app.command()
@guarded
def train(
    data: Path = typer.Argument(..., help="Training images: gallery layout, or the root of --list files."),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, config, metrics, plot)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with training settings."),
    list_files: Optional[List[Path]] = typer.Option(None, "--list", help="List file(s) of 'path<TAB>label' "
                                                    "lines, image paths relative to DATA; repeatable."),
    val_list: Optional[str] = typer.Option(None, "--val-list", help="Validation queries list file."),
    val_gallery_list: Optional[str] = typer.Option(None, "--val-gallery-list", help="Validation gallery."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr", callback=finite),
    size: Optional[int] = typer.Option(None, "--size", min=32, help="Train at this image side throughout "
                                       "(resolutions = [[0, N]]); the shipped model was trained at 160."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="efficientnet_lite0, efficientnet_lite2, "
                                          "a fine-tuned teacher's checkpoint (.pt), or '' for none."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="pplcnet (the shipped network), or "
                                           "efficientnet_lite0/_lite2 to fine-tune a teacher."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/last.pt."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from another run's checkpoint "
                                            "or an exported ONNX model ('fp32': the shipped one); weights "
                                            "only: new schedule, new optimizer."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if present)."),
    quiet: bool = QUIET,
):
    """Train the PP-LCNet-2.5x embedder with metric learning (needs PyTorch).

    On several processes: torchrun --nproc-per-node N cli.py train ... (DDP; gloo on CPUs, nccl on GPUs).
    """
    require_torch()
    from shitu.train.config import load_config
    from shitu.train.loop import Trainer

    overrides = dict(data=str(data), lists=[str(p) for p in list_files] if list_files else None,
                     val_list=val_list, val_gallery_list=val_gallery_list, epochs=epochs, lr=lr,
                     teacher=teacher, backbone=backbone, seed=seed, init_from=init_from,
                     resolutions=[[0, size]] if size else None)
    trainer = Trainer(load_config(config, overrides), out, device, TerminalReporter(quiet))
    if trainer.device.type == "cpu" and trainer.world.main and not quiet:
        from shitu.train.allocator import allocator_hint

        hint = allocator_hint()
        if hint:
            note(hint)
    if resume:
        trainer.resume()
    final = trainer.fit()
    if trainer.world.main:
        typer.echo(f"finished: {json.dumps(final)}", err=True)


def require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ShituError("this command needs PyTorch: pip install 'shitu[train]'") from None


# -- index maintenance: add, remove, info, check ----------------------------------------------------
def note(message: str):
    typer.echo(f"note: {message}", err=True)


def rebuilt_note(report):
    note(f"rebuilt the {report.index_type} FAISS index from {report.count} stored vectors "
         f"(this index type cannot delete in place)")


@app.command()
@guarded
def add(
    ctx: typer.Context,
    paths: List[Path] = typer.Argument(..., help="Image files (need --label) or folders inside the index's "
                                       "gallery; a folder's images are labelled by their label folder."),
    label: Optional[str] = typer.Option(None, "--label", help="Label of the given files; for folders, "
                                        "overrides their label folders."),
    index: Path = INDEX,
    store: Optional[str] = STORE,
    model: Optional[Path] = MODEL,
    quiet: bool = QUIET,
):
    """Add new images and replace changed ones, without rebuilding the index."""
    from shitu.index import Index

    report = Index(index, model, TerminalReporter(quiet), store=where(index, store)).add(paths, label)
    if report.rebuilt:
        rebuilt_note(report)
    typer.echo(f"{store or index}: {report.added} new images added, {report.replaced} changed ones replaced, "
               f"{report.relabelled} relabelled, {report.unchanged} unchanged, {len(report.bad)} unreadable "
               f"skipped; it now holds {report.count} images of {report.labels} labels", err=True)


@app.command()
@guarded
def remove(
    ctx: typer.Context,
    label: Optional[List[str]] = typer.Option(None, "--label", help="Remove every image of this label; "
                                              "repeatable."),
    path: Optional[List[str]] = typer.Option(None, "--path", help="Remove this image, or all below this "
                                             "folder (as stored, or a path inside the gallery); repeatable."),
    index: Path = INDEX,
    store: Optional[str] = STORE,
):
    """Remove images from an index, without rebuilding it."""
    from shitu.index import Index

    report = Index(index, store=where(index, store)).remove(label or [], path or [])
    if report.rebuilt:
        rebuilt_note(report)
    typer.echo(f"removed {report.removed} images from {store or index}; it now holds {report.count} images of "
               f"{report.labels} labels", err=True)


@app.command()
@guarded
def info(
    index: Path = INDEX,
    store: Optional[str] = STORE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
):
    """Show what an index holds and which model built it."""
    from shitu.index.calibration import describe
    from shitu.index import Index

    data = Index(index, store=where(index, store)).info()
    if as_json:
        print_json(data)
        return
    data["threshold"] = describe(data.pop("calibration"))
    fields = [[key, value] for key, value in data.items() if key not in ("model", "label_counts", "bytes")]
    fields += [["model", f"{data['model']['name']} {data['model']['version']} "
                         f"(sha256 {data['model']['sha256'][:12]})"]]
    trained = data["model"]["training_labels"]
    fields += [["model trained on", "not recorded" if trained is None else f"{trained} product labels"]]
    fields += [[f"{what} bytes", size] for what, size in data["bytes"].items()]
    print_table(f"index {store or index}", ["field", "value"], fields)
    print_table("images per label", ["label", "images"], [[k, v] for k, v in data["label_counts"].items()])


@app.command()
@guarded
def check(
    index: Path = INDEX,
    store: Optional[str] = STORE,
    model: Optional[Path] = MODEL,
    repair: bool = typer.Option(False, "--repair", help="Rebuild the FAISS file from the stored vectors "
                                "and delete leftover files, then check again."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
):
    """Verify an index: FAISS ids against database rows, stored vectors, model, leftover files."""
    from shitu.index import Index

    report = Index(index, model, store=where(index, store)).check(repair)
    if as_json:
        print_json(report.to_json())
    else:
        for line in report.repaired:
            typer.echo(f"repaired: {line}")
        for line in report.problems:
            typer.echo(f"problem: {line}")
        for line in report.notes:
            typer.echo(f"note: {line}")
        typer.echo(f"{store or index}: " + ("ok" if report.ok else f"{len(report.problems)} problems"))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@guarded
def shrink(
    data: Path = typer.Argument(..., help="Gallery folder, or the root of --list files."),
    out: Path = typer.Option(..., "--out", help="Folder for the copy (outside DATA); same relative paths."),
    side: int = typer.Option(280, "--side", min=32, help="Shorter side of the copies; 280 keeps all that "
                             "training at 224 px uses. Smaller photos are copied unchanged."),
    quality: int = typer.Option(85, "--quality", min=1, max=95, help="JPEG and WebP quality of the copies."),
    list_files: Optional[List[Path]] = typer.Option(None, "--list", help="Copy only the images of these list "
                                                    "files (paths relative to DATA); repeatable."),
    quiet: bool = QUIET,
):
    """Copy a photo collection at a smaller size, to move it to a training machine: list files and label
    folders work unchanged with the copy as their root."""
    from shitu.gallery import read_gallery
    from shitu.shrink import check_destination, shrink_collection

    check_destination(data, out)
    reporter = TerminalReporter(quiet)
    items = read_gallery(data, list_files, reporter)
    report = shrink_collection(data, items, out, side, quality, reporter)
    typer.echo(f"wrote {report.shrunk + report.copied} images to {out} ({report.shrunk} shrunk, {report.copied} "
               f"copied unchanged, {len(report.bad)} unreadable skipped): {report.bytes_before / 1e6:.1f} MB "
               f"-> {report.bytes_after / 1e6:.1f} MB", err=True)


# -- the HTTP service (issue #18) -------------------------------------------------------------------
@app.command()
@guarded
def serve(
    index: Path = INDEX,
    store: Optional[str] = STORE,
    model: Optional[Path] = MODEL,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback "
                             "should have a token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free one)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="SHITU_TOKEN", show_envvar=True,
                                        help="Bearer token that adding and removing need (default: none)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", callback=finite, help="Largest request "
                                        "body (all its photos together), in MB."),
):
    """Serve the index over HTTP: a JSON API (/v1, docs at /docs) and a web page at /."""
    from shitu.serve.server import serve as run_server

    if token is not None and not token.strip():
        raise ShituError("the token is empty: give --token (or SHITU_TOKEN) a value, or leave it unset")
    run_server(index, model, host, port, token, max_upload_mb, say=lambda line: typer.echo(line, err=True),
               store=where(index, store))


# -- speed: int8 quantization (issue #4) -------------------------------------------------------------
@app.command()
@guarded
def quantize(
    model: Path = typer.Argument(..., help="fp32 shitu ONNX model to quantize."),
    out: Path = typer.Option(..., "--out", help="int8 ONNX file to write."),
    calibration: Path = typer.Option(..., "--calibration", help="Gallery-like photos to calibrate on: "
                                     "one sub-folder per label."),
    list_file: Optional[List[Path]] = typer.Option(None, "--list", help="List file of 'path<TAB>label' "
                                                   "lines, paths relative to --calibration; repeatable."),
    images: int = typer.Option(64, "--images", min=1, help="Calibration photos to use, taken label by "
                               "label in turn (memory grows with them: ~3 GB for 64 at 160 px)."),
    quiet: bool = QUIET,
):
    """Write a static int8 copy of a model for faster CPU inference (needs onnx); indexes must be rebuilt."""
    from shitu.gallery import read_gallery

    try:
        from shitu.quantize import pick_calibration, quantize_model
    except ImportError as exc:
        raise ShituError(f"this command needs onnx: pip install 'shitu[quantize]' ({exc})") from None
    reporter = TerminalReporter(quiet)
    items = pick_calibration(read_gallery(calibration, list_file, reporter), images)
    report = quantize_model(model, out, items, reporter=reporter)
    typer.echo(f"wrote {report.path} (version {report.version}): calibrated on {report.images} images, "
               f"{len(report.bad)} unreadable skipped; {report.int8_bytes / 1e6:.1f} MB, "
               f"{report.int8_bytes / report.fp32_bytes:.0%} of the fp32 file. Indexes built with the fp32 "
               f"model must be rebuilt with this one.", err=True)
