"""Readers running while a writer changes the index see a whole state every time, never an error."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from cli import app
from tests.conftest import REPO, solid

READER = """
import json, sys, time
from shitu.errors import ShituError
from shitu.recognizer import Recognizer
index, model, photo, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
seen, errors, end = [], [], time.time() + seconds
while time.time() < end:
    try:
        recognizer = Recognizer(index, model)
        for _ in range(3):  # a long-lived recognizer refreshes its snapshot when a writer committed
            answer = recognizer.query([photo], topk=50)[0]
            snapshot = recognizer.snapshot  # the one that answered
            seen.append([len(snapshot.rows), sorted(m.label for m in answer.results), snapshot.index.ntotal])
    except ShituError as exc:
        errors.append(str(exc))
print(json.dumps({"seen": seen, "errors": errors}))
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
    writes = 0
    while reader.poll() is None:
        added = runner.invoke(app, ["add", *map(str, extra), "--label", "green tea", "--index", str(index),
                                    "--model", str(tiny_model), "-q"])
        removed = runner.invoke(app, ["remove", "--label", "green tea", "--index", str(index)])
        assert added.exit_code == 0 and removed.exit_code == 0, added.output + removed.output
        writes += 2
    out, err = reader.communicate()
    report = json.loads(out)
    assert report["errors"] == [], report["errors"]
    assert writes >= 4 and len(report["seen"]) >= 3, (writes, len(report["seen"]))
    for rows, labels, ntotal in report["seen"]:
        assert (rows, ntotal) in ((6, 6), (9, 9))  # the old or the new state, database and FAISS agreeing
        assert len(labels) == rows and labels.count("green tea") == rows - 6
