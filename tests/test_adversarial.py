"""An adversarial pass kept in the suite: random galleries, list files and index damage against the CLI.

Whatever the names, the list file or the damage, every command keeps the contract: exit status 0, 1 or 2,
one clear line instead of a traceback, no file changed outside the index folder, an index that was valid
stays valid, a failed command leaves the index as it was, and a successful rebuild is valid.
"""

import json
import os
import shutil
import sqlite3
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app
from shitu.index import Index
from shitu.index.files import DB_NAME
from tests.conftest import solid

EXAMPLES = 25
ADVERSARIAL = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                              HealthCheck.function_scoped_fixture])
runner = CliRunner()

TRICKY = ["Café", unicodedata.normalize("NFD", "Café"), "Crème Brûlée", "[b]Garlic", "Kiwi [organic]",
          "Cola [/can]", "[/x]", "a\\b", " lead", "trail ", "x.jpg", "-dash", "%", "' or 1=1 --", "字"]
UNDECODABLE = [b"caf\xe9", b"k\xff", b"\xed\xa0\x80x"]  # not UTF-8: arrive as surrogate escapes
NAME = st.one_of(st.sampled_from(TRICKY + [os.fsdecode(name) for name in UNDECODABLE]),
                 st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
                         min_size=1, max_size=10))
NAME = NAME.filter(lambda n: n not in (".", "..") and len(os.fsencode(n)) < 200)
GALLERY = st.dictionaries(NAME, st.lists(NAME, min_size=1, max_size=2, unique=True), min_size=1, max_size=3)
TAMPERING = ["none", "manifest value", "manifest key", "faiss truncated", "faiss bytes", "faiss plain",
             "database truncated", "database bytes", "vector blob", "lock folder", "faiss missing"]
COMMANDS = ["query", "query table", "eval", "map@r", "info", "info table", "check", "repair", "add folder",
            "add file", "remove", "rebuild"]


def shitu(*args):
    return runner.invoke(app, [str(a) for a in args])


def files_below(folder: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file below ``folder`` (but not below ``skip``) with its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def make_gallery(root: Path, gallery: dict, rng) -> list[tuple[str, str]]:
    """Label folders of small solid images; returns (relpath, label) of each file."""
    entries = []
    for label, names in gallery.items():
        for name in names:
            path = root / label / f"{name}.png"
            try:
                solid(path, tuple(int(v) for v in rng.integers(0, 256, 3)), size=(8, 8), fmt="PNG")
            except OSError:
                continue  # a name this file system refuses: not ours to test
            entries.append((f"{label}/{name}.png", label))
    return entries


def tamper(index: Path, how: str, rng):
    """Damage the index the way a crash, a bad disk or a careless user would."""
    db = index / DB_NAME
    if not db.is_file() or how == "none":
        return
    with sqlite3.connect(db) as conn:
        keys = [k for (k,) in conn.execute("select key from manifest order by key")]
        live = json.loads(dict(conn.execute("select key, value from manifest"))["faiss_file"])
        key = keys[int(rng.integers(len(keys)))]
        if how == "manifest value":
            conn.execute("update manifest set value = ? where key = ?", (rng.choice(["x", "[", '"x"', "-1", "null"]), key))
        elif how == "manifest key":
            conn.execute("delete from manifest where key = ?", (key,))
        elif how == "vector blob":
            conn.execute("update images set vector = ? where id = (select min(id) from images)",
                         (bytes(int(rng.integers(0, 9))),))
    conn.close()
    faiss_file = index / live
    if how == "faiss truncated":
        faiss_file.write_bytes(faiss_file.read_bytes()[:int(rng.integers(0, faiss_file.stat().st_size))])
    elif how == "faiss bytes":
        overwrite(faiss_file, rng)
    elif how == "faiss plain":
        import faiss

        plain = faiss.IndexFlatIP(3)
        plain.add(np.eye(3, dtype=np.float32))
        faiss.write_index(plain, str(faiss_file))
    elif how == "faiss missing":
        faiss_file.unlink()
    elif how == "database truncated":
        db.write_bytes(db.read_bytes()[:int(rng.integers(0, db.stat().st_size))])
    elif how == "database bytes":
        overwrite(db, rng)
    elif how == "lock folder":
        (index / ".write.lock").mkdir(exist_ok=True)


def overwrite(path: Path, rng):
    data = bytearray(path.read_bytes())
    start = int(rng.integers(0, len(data)))
    data[start:start + 64] = rng.integers(0, 256, min(64, len(data) - start), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def command_args(what: str, work: Path, entries, model: Path, rng) -> list:
    gallery, index = work / "gallery", work / "index"
    labels = sorted({label for _, label in entries}) or ["none"]
    common = ["--index", index]
    if what in ("query", "query table"):
        return ["query", work / "q.png", *common, "--model", model, *(["--json"] if what == "query" else [])]
    if what in ("eval", "map@r"):
        return ["eval", *common, "--model", model, "--metric", "recall@1" if what == "eval" else "map@r",
                "-q", "--json"]
    if what in ("info", "info table"):
        return ["info", *common, *(["--json"] if what == "info" else [])]
    if what in ("check", "repair"):
        return ["check", *common, "--model", model, "--json", *(["--repair"] if what == "repair" else [])]
    if what == "add folder":
        return ["add", gallery, *common, "--model", model, "-q"]
    if what == "add file":
        label = labels[int(rng.integers(len(labels)))]
        photo = solid(gallery / "added" / f"n{int(rng.integers(1000))}.png", (9, 99, 199), size=(8, 8))
        return ["add", photo, "--label", label, *common, "--model", model, "-q"]
    if what == "remove":
        return ["remove", "--label", labels[int(rng.integers(len(labels)))], *common]
    return ["build-index", gallery, *common, "--model", model, "-q", *list_args(work)]


def list_args(work: Path) -> list:
    listing = work / "gallery.list"
    return ["--list", listing] if listing.exists() else []


def valid(index: Path, model: Path) -> bool:
    return (index / DB_NAME).is_file() and Index(index, model).check().ok


def run_and_judge(args: list, work: Path, model: Path):
    """Run one command and assert the contract around it."""
    index = work / "index"
    outside, inside = files_below(work, skip=index), files_below(index)
    was_valid = valid(index, model)
    result = shitu(*args)
    shown = f"{[str(a) for a in args]}\n{result.output}"
    assert result.exit_code in (0, 1, 2), shown
    assert result.exception is None or isinstance(result.exception, SystemExit), (shown, result.exception)
    assert "Traceback" not in result.output, shown
    if result.exit_code == 1 and args[0] != "check":  # check prints its problems on stdout
        assert any(line.startswith("error: ") for line in result.stderr.splitlines()), shown
    assert files_below(work, skip=index) == outside, f"a file outside the index changed: {shown}"
    if was_valid:
        assert valid(index, model), f"a valid index was damaged: {shown}"
    if result.exit_code != 0 and "--repair" not in args:
        assert files_below(index) == inside, f"a failed command changed the index: {shown}"
    if result.exit_code == 0 and args[0] == "build-index":
        assert valid(index, model), f"a successful rebuild is not valid: {shown}"


@ADVERSARIAL
@given(gallery=GALLERY, as_list=st.booleans(), list_labels=st.lists(NAME, min_size=1, max_size=3),
       damage=st.sampled_from(TAMPERING), commands=st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_cli_keeps_its_contract_on_random_galleries_lists_and_damage(tiny_model, gallery, as_list, list_labels,
                                                                    damage, commands, seed):
    rng = np.random.default_rng(seed)
    work = Path(tempfile.mkdtemp(prefix="shitu-adversarial-"))
    try:
        entries = make_gallery(work / "gallery", gallery, rng)
        if as_list:  # the same files under labels of the list's own choosing
            entries = [(path, list_labels[n % len(list_labels)]) for n, (path, _) in enumerate(entries)]
            (work / "gallery.list").write_text("".join(f"{path}\t{label}\n" for path, label in entries),
                                               encoding="utf-8", errors="surrogateescape")
        solid(work / "q.png", (220, 30, 30), size=(8, 8))
        run_and_judge(command_args("rebuild", work, entries, tiny_model, rng), work, tiny_model)
        tamper(work / "index", damage, rng)
        for what in commands:
            run_and_judge(command_args(what, work, entries, tiny_model, rng), work, tiny_model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
