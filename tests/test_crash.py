"""SIGKILL build-index and add at chosen moments: the index always holds the old or the new state.

The writers run unmodified in child processes. The child only wraps ``os.fsync``, ``os.replace``,
``os.unlink`` and every SQL statement so that each one writes a line to an event log and then pauses a
few milliseconds. The parent picks an event number per round (seeded), waits for the child to reach it,
waits a little more and kills it, so the kills spread over the whole write protocol instead of landing
mostly in interpreter start-up.
"""

import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from shitu.index import Index
from shitu.index.database import Database
from shitu.index.files import DB_NAME
from tests.conftest import REPO, solid

SEED = 20240605
ROUNDS = 12  # per command
FIRST_BUILDS = 3  # extra rounds killing the very first build of an index
PAUSE = 0.004  # seconds the child sleeps after each logged event

CHILD = r"""
import os, sqlite3, sys, time

log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
pause = float(sys.argv[2])


def event(what):
    os.write(log, (what + "\n").encode())
    time.sleep(pause)


def traced(name):
    real = getattr(os, name)

    def wrapper(*args, **kwargs):
        event(f"{name} {os.path.basename(str(args[0]))}")
        result = real(*args, **kwargs)
        event(f"{name} done")
        return result

    setattr(os, name, wrapper)


for name in ("fsync", "replace", "unlink"):
    traced(name)
real_connect = sqlite3.connect


def connect(*args, **kwargs):
    conn = real_connect(*args, **kwargs)
    conn.set_trace_callback(lambda sql: event("sql " + " ".join(sql.split()[:3]).lower()))
    return conn


sqlite3.connect = connect
from cli import app

app(sys.argv[3:])
"""


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gallery_state(root):
    return {(p.relative_to(root).as_posix(), sha(p)) for p in root.glob("*/*.png")}


def index_state(index):
    store = Database(index)
    state = {(r.path, r.sha256) for r in store.all_rows()}
    store.close()
    return state


def random_colour(rng):
    return tuple(rng.randrange(256) for _ in range(3))


def change_gallery(root, rng, serial, delete):
    """One round's edits: a new image, a changed image and, for build rounds, a deleted one."""
    solid(root / f"l{rng.randrange(6)}" / f"new{serial}.png", random_colour(rng), size=(16, 12))
    existing = sorted(root.glob("*/*.png"))
    solid(rng.choice(existing), random_colour(rng), size=(16, 12))
    if delete and len(existing) > 20:
        rng.choice(existing).unlink()


def run_and_kill(args, log, target, delay):
    """Start the CLI in a child, kill it once it has logged ``target`` events (+ ``delay`` s)."""
    log.write_text("")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(log), str(PAUSE), *map(str, args)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if log.read_text().count("\n") >= target:
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    _, err = child.communicate(timeout=60)
    assert child.returncode in (0, -signal.SIGKILL), err.decode()
    return child.returncode, log.read_text().splitlines()


MILESTONES = {  # events that end a phase of the write protocol, in order
    "build-index": [("replace .vectors.", "FAISS file written"),
                    ("replace .gallery.db.tmp", "after the commit")],
    "add": [("replace .vectors.", "FAISS file written"), ("sql begin immediate", "inside the transaction"),
            ("sql commit", "after the commit")],
}


def landed(events, command):
    """Where in the protocol a kill landed: the last milestone the child got past (an event followed it)."""
    phase = "before writing"
    for marker, name in MILESTONES[command]:
        position = next((n for n, e in enumerate(events) if e.startswith(marker)), None)
        if position is None or position == len(events) - 1:
            break
        phase = name
    return phase


def check_round(index, model, old, new):
    """The index opens, passes check, and holds exactly the old or exactly the new rows."""
    if not (index / DB_NAME).exists():
        assert old is None, "an index that existed has disappeared"
        return None
    report = Index(index, model).check()
    assert report.ok, report.problems
    state = index_state(index)
    assert state in (old, new), f"mixed state: {len(state - (old or set()))} rows not in the old state"
    return state


@pytest.fixture
def crash_gallery(tmp_path):
    rng = random.Random(SEED)
    root = tmp_path / "gallery"
    for n in range(30):
        solid(root / f"l{n % 5}" / f"img{n:02d}.png", random_colour(rng), size=(16, 12))
    return root


def test_kills_leave_the_old_or_the_new_state(crash_gallery, tiny_model, tmp_path, capsys):
    rng = random.Random(SEED)
    index, log = tmp_path / "index", tmp_path / "events.log"
    commands = {"build-index": ["build-index", crash_gallery, "--index", index, "--model", tiny_model, "-q"],
                "add": ["add", crash_gallery, "--index", index, "--model", tiny_model, "-q"]}
    code, events = run_and_kill(commands["build-index"], log, target=10**9, delay=0)
    assert code == 0
    state = check_round(index, tiny_model, None, gallery_state(crash_gallery))
    survived, where = 0, {}

    def record(command, code, events):
        spot = "finished" if code == 0 else landed(events, command.split()[-1])
        where[f"{command}: {spot}"] = where.get(f"{command}: {spot}", 0) + 1

    for n in range(FIRST_BUILDS):  # killed before its commit, a first build leaves no index at all
        args = ["build-index", crash_gallery, "--index", tmp_path / f"first{n}", "--model", tiny_model, "-q"]
        code, partial = run_and_kill(args, log, rng.randrange(len(events)), rng.uniform(0, 1.5 * PAUSE))
        check_round(tmp_path / f"first{n}", tiny_model, None, gallery_state(crash_gallery))
        survived += 1
        record("first build-index", code, partial)

    lengths = {}  # events in an uninterrupted run, which sets the range of kill points
    for serial in range(2 * ROUNDS):
        command = "build-index" if serial % 2 == 0 else "add"
        change_gallery(crash_gallery, rng, serial, delete=command == "build-index")
        new = gallery_state(crash_gallery)
        if command == "add":
            files = {path for path, _ in new}
            new |= {(path, digest) for path, digest in state if path not in files}
        if command not in lengths:  # the first round of each command finishes, to learn its length
            code, events = run_and_kill(commands[command], log, target=10**9, delay=0)
            lengths[command] = len(events)
        else:
            # Anywhere, or among the last events, where the commit and the clean-up happen.
            target = max(0, lengths[command] - rng.randrange(15)) if rng.random() < 0.4 else \
                rng.randrange(lengths[command] + 2)
            code, events = run_and_kill(commands[command], log, target, rng.uniform(0, 1.5 * PAUSE))
        state = check_round(index, tiny_model, state, new)
        survived += 1
        record(command, code, events)
    with capsys.disabled():
        print(f"\ncrash rounds survived: {survived} of {2 * ROUNDS + FIRST_BUILDS}; kills landed: {where}")
    inside = sum(n for key, n in where.items() if "written" in key or "inside" in key)
    assert inside >= 6 and where.get("add: inside the transaction", 0) >= 1, where  # the window was hit


def test_hot_journal_of_a_killed_writer_never_reaches_a_rebuilt_database(crash_gallery, tiny_model, tmp_path):
    """A writer killed mid-transaction leaves ``gallery.db-journal``; build-index must roll it back or
    drop it, never let it be replayed into the database file it renames into place."""
    index = tmp_path / "index"
    for follow_up in ("build-index", "reader"):
        result = subprocess.run([sys.executable, "-m", "cli", "build-index", crash_gallery, "--index", index,
                                 "--model", tiny_model, "-q"], cwd=REPO, capture_output=True)
        assert result.returncode == 0, result.stderr
        rows_before = index_state(index)
        spill = (f"import os, signal, sqlite3\n"
                 f"c = sqlite3.connect({str(index / DB_NAME)!r}, isolation_level=None)\n"
                 f"c.execute('pragma cache_size = 2'); c.execute('begin immediate')\n"
                 f"junk = [(f'junk{{i}}', 'x' * 3000) for i in range(300)]\n"
                 f"c.executemany('insert into manifest values (?, ?)', junk)\n"
                 f"c.execute('delete from images')\n"
                 f"os.kill(os.getpid(), signal.SIGKILL)\n")
        subprocess.run([sys.executable, "-c", spill], cwd=REPO)
        journal = index / f"{DB_NAME}-journal"
        assert journal.stat().st_size > 4096  # a hot journal, and the database file half-written
        if follow_up == "build-index":
            solid(crash_gallery / "l0" / "fresh.png", (1, 2, 3), size=(16, 12))
            result = subprocess.run([sys.executable, "-m", "cli", "build-index", crash_gallery, "--index",
                                     index, "--model", tiny_model, "-q"], cwd=REPO, capture_output=True)
            assert result.returncode == 0, result.stderr
            assert index_state(index) == gallery_state(crash_gallery)
        else:
            assert index_state(index) == rows_before  # the reader rolled the journal back
        assert not journal.exists()
        with sqlite3.connect(index / DB_NAME) as conn:
            assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
            assert conn.execute("select count(*) from manifest where key like 'junk%'").fetchone() == (0,)
        conn.close()
        assert Index(index, tiny_model).check().ok
