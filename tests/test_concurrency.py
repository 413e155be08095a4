"""Readers running while a writer changes the index see a whole state every time, never an error."""

import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from cli import app
from tests.conftest import REPO, solid

READER = """
import json, sys, time
from shitu.errors import ShituError
from shitu.recognizer import Recognizer
index, model, photo, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
seen, errors, end = {}, [], time.time() + seconds
while time.time() < end:
    try:
        recognizer = Recognizer(index, model)
        for _ in range(3):  # a long-lived recognizer refreshes its snapshot when a writer committed
            answer = recognizer.query([photo], topk=50)[0]
            snapshot = recognizer.snapshot  # the one that answered
            state = (len(snapshot.rows), tuple(sorted(m.label for m in answer.results)), snapshot.index.ntotal)
            seen[state] = seen.get(state, 0) + 1
    except ShituError as exc:
        errors.append(str(exc))
# Distinct states with counts: a small report, so the pipe to the test never fills up.
print(json.dumps({"seen": [[*state, count] for state, count in seen.items()], "errors": errors[:20]}))
"""


def test_queries_during_adds_and_removes_see_whole_states(colour_gallery, tiny_model, tmp_path):
    runner = CliRunner()
    index = tmp_path / "index"
    assert runner.invoke(app, ["build-index", str(colour_gallery), "--index", str(index), "--model",
                               str(tiny_model), "-q"]).exit_code == 0
    extra = [solid(colour_gallery / "green tea" / f"{n}.png", (20, 150 + n * 10, 40)) for n in range(3)]
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    reader = subprocess.Popen([sys.executable, "-c", READER, str(index), str(tiny_model), str(photo), "6"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writes, deadline = 0, time.time() + 30
    while reader.poll() is None and time.time() < deadline:
        added = runner.invoke(app, ["add", *map(str, extra), "--label", "green tea", "--index", str(index),
                                    "--model", str(tiny_model), "-q"])
        removed = runner.invoke(app, ["remove", "--label", "green tea", "--index", str(index)])
        assert added.exit_code == 0 and removed.exit_code == 0, added.output + removed.output
        writes += 2
        time.sleep(0.05)  # let the reader run between commits on a 2-core machine
    try:
        out, err = reader.communicate(timeout=60)
    finally:
        reader.kill()
    report = json.loads(out)
    assert report["errors"] == [], report["errors"]
    answered = sum(count for *_, count in report["seen"])
    assert writes >= 4 and answered >= 3, (writes, answered)
    for rows, labels, ntotal, _ in report["seen"]:
        assert (rows, ntotal) in ((6, 6), (9, 9))  # the old or the new state, database and FAISS agreeing
        assert len(labels) == rows and labels.count("green tea") == rows - 6
