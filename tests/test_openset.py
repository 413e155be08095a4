"""Open-set evaluation and the calibrated threshold, against answers worked out by hand."""

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from cli import app
from shitu.errors import ShituError
from shitu.openset import choose_threshold, open_set_curve
from shitu.recognizer import Recognizer
from tests.conftest import colour_embedding, solid

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_curve_and_choice_by_hand():
    # known: 0.9 right, 0.8 wrong, 0.7 right; unknown: 0.75, 0.6
    curve = open_set_curve([0.9, 0.8, 0.7], [True, False, True], [0.75, 0.6])
    assert curve.thresholds.tolist() == pytest.approx([0.6, 0.65, 0.725, 0.775, 0.85, 0.900001])
    assert curve.known_right.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 0])
    assert curve.known_wrong.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3, 0, 0])
    assert curve.known_rejected.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert curve.unknown_rejected.tolist() == pytest.approx([0, 0.5, 0.5, 1, 1, 1])
    # x = unknown rejected, y = known right: 0.5 * 2/3 + 0.5 * 1/3
    assert curve.auc() == pytest.approx(0.5)
    # balanced accuracy (right + unknown rejected) / 2 peaks at 2/3 at 0.775 and 0.85: the lower wins
    assert choose_threshold(curve).threshold == pytest.approx(0.775)
    assert choose_threshold(curve, 0.5).threshold == pytest.approx(0.65)
    assert choose_threshold(curve, 0.9).threshold == pytest.approx(0.775)
    assert choose_threshold(curve, 0.0).threshold == pytest.approx(0.6)


def test_curve_needs_both_kinds_of_query_and_a_sane_target():
    with pytest.raises(ShituError, match="no unknown query"):
        open_set_curve([0.9], [True], [])
    with pytest.raises(ShituError, match="between 0 and 1"):
        choose_threshold(open_set_curve([0.9], [True], [0.5]), 1.5)


# The tiny gallery (conftest.PALETTE) with the mean-colour model; top-1 scores worked out from
# colour_embedding, lowest first: U green -0.119, U yellow 0.431, KW purple 0.653 (labelled red apple,
# nearest blue can), U grey 0.684, KR cream 0.993, U dark red 0.998, KR blue 0.9995, KR red 1.0.
KNOWN = {"red apple/red.png": (220, 30, 30), "blue can/blue.png": (25, 50, 210),
         "Crème Fraîche/cream.png": (200, 180, 170), "red apple/purple.png": (150, 60, 200)}
UNKNOWN = {"green.png": (30, 200, 40), "yellow.png": (230, 220, 30), "grey.png": (120, 120, 120),
           "dark red.png": (205, 35, 45)}
GALLERY_SHADES = {"red apple": [(220, 30, 30), (200, 40, 20)], "Crème Fraîche": [(240, 240, 235), (230, 235, 240)],
                  "blue can": [(20, 40, 220), (30, 60, 200)]}


def top1(rgb) -> float:
    return max(float(colour_embedding(rgb) @ colour_embedding(shade))
               for shades in GALLERY_SHADES.values() for shade in shades)


@pytest.fixture
def open_set(colour_gallery, tiny_model, tmp_path):
    """An index of the colour gallery, known query photos in label folders, unknown ones loose."""
    index = tmp_path / "idx"
    assert cli("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    for relpath, rgb in KNOWN.items():
        solid(tmp_path / "known" / relpath, rgb, fmt="PNG")
    for name, rgb in UNKNOWN.items():
        solid(tmp_path / "unknown" / name, rgb, fmt="PNG")
    return index, tmp_path / "known", tmp_path / "unknown"


def test_open_set_curve_of_the_tiny_gallery_by_hand(open_set, tiny_model):
    index, known, unknown = open_set
    result = cli("eval", "--index", index, "--model", tiny_model, "--queries", known, "--unknown", unknown,
                 "--json", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    curve = data["open_set"]
    assert data["recall@1"] == 0.75 and curve["known_queries"] == 4 and curve["unknown_queries"] == 4
    assert curve["known_right"] == pytest.approx([.75, .75, .75, .75, .75, .5, .5, .25, 0])
    assert curve["known_wrong"] == pytest.approx([.25, .25, .25, 0, 0, 0, 0, 0, 0])
    assert curve["known_rejected"] == pytest.approx([0, 0, 0, .25, .25, .5, .5, .75, 1])
    assert curve["unknown_rejected"] == pytest.approx([0, .25, .5, .5, .75, .75, 1, 1, 1])
    # .25 * .75 three times, then .25 * (.5 + .5) / 2
    assert curve["auc"] == pytest.approx(0.6875)
    # balanced accuracy 0.75 between grey and cream, and again between dark red and blue: the lower wins
    grey, cream = top1(UNKNOWN["grey.png"]), top1(KNOWN["Crème Fraîche/cream.png"])
    assert data["threshold"] == pytest.approx((grey + cream) / 2, abs=1e-5)
    assert curve["chosen"]["known_right"] == .75 and curve["chosen"]["unknown_rejected"] == .75
    targeted = json.loads(cli("eval", "--index", index, "--model", tiny_model, "--queries", known, "--unknown",
                              unknown, "--target-unknown-rejection", "0.9", "--json", "-q").stdout)
    dark_red, blue = top1(UNKNOWN["dark red.png"]), top1(KNOWN["blue can/blue.png"])
    assert targeted["threshold"] == pytest.approx((dark_red + blue) / 2, abs=1e-5)
    assert targeted["open_set"]["chosen"]["unknown_rejected"] == 1.0


def test_calibrated_threshold_is_stored_shown_used_and_overridden(open_set, tiny_model, tmp_path):
    index, known, unknown = open_set
    purple = known / "red apple" / "purple.png"  # top-1 blue can at 0.653: answered until calibrated
    before = json.loads(cli("query", purple, "--index", index, "--model", tiny_model, "--json").stdout)
    assert before[0]["label"] == "blue can"
    assert json.loads(cli("info", "--index", index, "--json").stdout)["threshold"] is None

    long_lived = Recognizer(index, tiny_model)  # opened before calibrating, like a running service
    assert long_lived.query([purple])[0].label == "blue can"
    result = cli("calibrate", "--index", index, "--model", tiny_model, "--queries", known, "--unknown", unknown,
                 "--json", "-q")
    assert result.exit_code == 0, result.output
    assert long_lived.query([purple])[0].label is None
    expected = (top1(UNKNOWN["grey.png"]) + top1(KNOWN["Crème Fraîche/cream.png"])) / 2
    stored = json.loads(result.stdout)
    assert stored["threshold"] == pytest.approx(expected, abs=1e-5)
    assert stored["calibration"]["known_right"] == .75 and stored["calibration"]["unknown_rejected"] == .75

    info = json.loads(cli("info", "--index", index, "--json").stdout)
    assert info["threshold"] == stored["threshold"]
    assert info["calibration"]["rule"] == "best balanced accuracy"
    assert f"{stored['threshold']:.4f}" in cli("info", "--index", index).stdout

    after = json.loads(cli("query", purple, "--index", index, "--model", tiny_model, "--json").stdout)
    assert after[0]["label"] is None and after[0]["results"][0]["label"] == "blue can"
    overridden = json.loads(cli("query", purple, "--index", index, "--model", tiny_model, "--threshold", "0.5",
                                "--json").stdout)
    assert overridden[0]["label"] == "blue can"

    recognizer = Recognizer(index, tiny_model)
    assert recognizer.threshold == stored["threshold"]
    assert recognizer.query([purple])[0].label is None
    assert recognizer.query([purple], threshold=-1)[0].label == "blue can"
    assert recognizer.query([known / "red apple" / "red.png"])[0].label == "red apple"


def test_calibration_survives_add_remove_and_a_rebuild_with_the_same_model_only(open_set, colour_gallery, tiny_model,
                                                                 other_tiny_model):
    index, known, unknown = open_set
    assert cli("calibrate", "--index", index, "--model", tiny_model, "--queries", known, "--unknown", unknown,
               "-q").exit_code == 0
    threshold = json.loads(cli("info", "--index", index, "--json").stdout)["threshold"]
    assert cli("check", "--index", index, "--model", tiny_model).exit_code == 0
    extra = solid(colour_gallery / "blue can" / "new.png", (25, 45, 215), fmt="PNG")
    assert cli("add", extra.parent, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    assert cli("remove", "--path", "blue can/new.png", "--index", index).exit_code == 0
    assert json.loads(cli("info", "--index", index, "--json").stdout)["threshold"] == threshold
    assert cli("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    assert json.loads(cli("info", "--index", index, "--json").stdout)["threshold"] == threshold
    assert cli("build-index", colour_gallery, "--index", index, "--model", other_tiny_model, "-q").exit_code == 0
    assert json.loads(cli("info", "--index", index, "--json").stdout)["threshold"] is None


def test_an_index_without_the_key_still_opens(open_set, tiny_model):
    index, known, _ = open_set
    db = sqlite3.connect(index / "gallery.db")
    assert db.execute("select count(*) from manifest where key = 'threshold'").fetchone()[0] == 0
    db.close()
    assert Recognizer(index, tiny_model).threshold is None
    answer = json.loads(cli("query", known / "red apple" / "purple.png", "--index", index, "--model", tiny_model,
                            "--json").stdout)
    assert answer[0]["label"] == "blue can"


def test_a_damaged_threshold_entry_is_an_error_not_a_traceback(open_set, tiny_model):
    index, known, _ = open_set
    db = sqlite3.connect(index / "gallery.db")
    db.execute("insert into manifest (key, value) values ('threshold', '\"high\"')")
    db.commit()
    db.close()
    result = cli("query", known / "red apple" / "red.png", "--index", index, "--model", tiny_model)
    assert result.exit_code == 1 and "run 'shitu calibrate' again" in result.output


@pytest.mark.parametrize("args, message", [
    (["--unknown", "U"], "need --queries"),
    (["--queries", "K", "--unknown-list", "x.txt"], "--unknown-list needs --unknown"),
    (["--queries", "K", "--target-unknown-rejection", "0.9"], "needs --unknown"),
    (["--queries", "K", "--unknown", "U", "--target-unknown-rejection", "1.5"], "between 0 and 1"),
    (["--queries", "K", "--unknown", "missing"], "not found"),
    (["--queries", "K", "--unknown", "K"], "labels the gallery has"),
])
def test_open_set_mistakes_get_one_error_line(open_set, tiny_model, args, message):
    index, known, unknown = open_set
    places = {"K": str(known), "U": str(unknown), "missing": str(unknown / "nowhere")}
    result = cli("eval", "--index", index, "--model", tiny_model, "-q", *[places.get(a, a) for a in args])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and message in result.output and "Traceback" not in result.output


def test_calibrate_refuses_another_model(open_set, other_tiny_model):
    index, known, unknown = open_set
    result = cli("calibrate", "--index", index, "--model", other_tiny_model, "--queries", known, "--unknown",
                 unknown, "-q")
    assert result.exit_code == 1 and "was built with model" in result.output
    assert json.loads(cli("info", "--index", index, "--json").stdout)["threshold"] is None
