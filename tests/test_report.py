"""``eval --report``: a self-contained page whose every image loads in a real browser (headless Chromium)."""

import re
import shutil
import subprocess

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from tests.test_openset import open_set  # noqa: F401  (the fixture: tiny index, known and unknown photos)

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: "
                                    "apt-get install chromium; .ci/run installs it)")


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def chromium(profile, *args) -> subprocess.CompletedProcess:
    """Headless Chromium with nothing that reaches the network or waits for a user."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def make_report(open_set, tiny_model, out, *extra):
    index, known, unknown = open_set
    result = cli("eval", "--index", index, "--model", tiny_model, "--queries", known, "--unknown", unknown,
                 "--report", out, "-q", *extra)
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8")


@needs_chromium
@pytest.mark.slow
def test_report_renders_with_every_image_loaded(open_set, tiny_model, tmp_path):  # noqa: F811
    page = make_report(open_set, tiny_model, tmp_path / "report.html")
    # self-contained: every picture is inlined, nothing is fetched
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "http://" not in page and "https://" not in page
    # 3 plots + one confusion (query, wrong top-1, best right photo) + 4 unknowns with their top-1
    assert len(sources) == 3 + 3 + 4 * 2

    dom = chromium(tmp_path / "profile", "--dump-dom", (tmp_path / "report.html").as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    total = re.search(r'data-images="(\d+)"', dom.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom.stdout)
    assert total and loaded, "the page's load script did not run"
    assert int(total.group(1)) == len(sources) and int(loaded.group(1)) == len(sources)

    shot = tmp_path / "shot.png"
    result = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1100,1400",
                      (tmp_path / "report.html").as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1100, 1400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # text, plots and photos, not an empty or error page


def test_report_without_matplotlib_keeps_tables_and_photos(open_set, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    import shitu.reportplots

    monkeypatch.setattr(shitu.reportplots, "pyplot", lambda: None)
    page = make_report(open_set, tiny_model, tmp_path / "report.html")
    assert "pip install 'shitu[report]'" in page.replace("&#x27;", "'")
    assert "data:image/png" not in page
    assert page.count("data:image/jpeg") == 3 + 4 * 2
    assert "Recall@1 per label, worst first" in page and "Crème Fraîche" in page


def test_report_lists_labels_worst_first_and_the_confusion(open_set, tiny_model, tmp_path):  # noqa: F811
    page = make_report(open_set, tiny_model, tmp_path / "report.html")
    labels = re.findall(r"<tr><td>([^<]+)</td><td class=num>\d+</td><td class=num>\d+</td>", page)
    # red apple: 1 of 2 right (purple is taken for blue can); the others 1 of 1
    assert labels[0] == "red apple" and sorted(labels[1:]) == ["Crème Fraîche", "blue can"]
    assert "blue can (1)" in page
    assert "top-1: blue can" in page and "best red apple" in page


def test_report_without_unknowns_and_with_a_gallery_photo_gone(open_set, tiny_model, colour_gallery,  # noqa: F811
                                                              tmp_path):
    index, known, _ = open_set
    (colour_gallery / "blue can" / "shot 0.jpg").unlink()  # the wrong top-1 of the purple query
    result = cli("eval", "--index", index, "--model", tiny_model, "--queries", known, "--report",
                 tmp_path / "r.html", "-q")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Open set" not in page and "Unknown queries" not in page
    assert "photo not found" in page  # a note in its place, not a broken image


def test_report_into_a_folder_is_an_error(open_set, tiny_model, tmp_path):  # noqa: F811
    index, known, _ = open_set
    result = cli("eval", "--index", index, "--model", tiny_model, "--queries", known, "--report", tmp_path, "-q")
    assert result.exit_code == 1 and "error:" in result.output and "is a folder" in result.output
