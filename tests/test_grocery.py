"""Real product photos (the shared Grocery Store Dataset) through build-index, query and eval."""

import json

import pytest
from typer.testing import CliRunner

from cli import app
from shitu.grocery import write_list

# Four products that look nothing alike: a fair check that the shipped model recognises real photos.
CLASSES = {"Banana", "Oatly-Natural-Oatghurt", "Red-Bell-Pepper", "Alpro-Fresh-Soy-Milk"}


@pytest.mark.slow
def test_index_query_and_eval_on_real_photos(grocery, tmp_path):
    train = write_list(grocery, "train", tmp_path / "train.txt", CLASSES)
    test = write_list(grocery, "test", tmp_path / "test.txt", CLASSES)
    runner = CliRunner()
    index = tmp_path / "index"
    built = runner.invoke(app, ["build-index", str(grocery), "--list", str(train), "--index", str(index), "-q"])
    assert built.exit_code == 0, built.output
    assert "of 4 labels" in built.stderr

    lines = test.read_text().splitlines()[:3]
    photos = [str(grocery / line.split("\t")[0]) for line in lines]
    answered = runner.invoke(app, ["query", *photos, "--index", str(index), "--json", "--topk", "3"])
    assert answered.exit_code == 0, answered.output
    answers = json.loads(answered.stdout)
    assert [a["image"] for a in answers] == photos
    assert all(len(a["results"]) == 3 and a["label"] in CLASSES for a in answers)

    scored = runner.invoke(app, ["eval", "--index", str(index), "--queries", str(grocery),
                                 "--queries-list", str(test), "--metric", "recall@1", "--json", "-q"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert result["queries"] == len(test.read_text().splitlines())
    assert result["recall@1"] >= 0.75  # chance is 0.25


def test_hold_out_lists_split_the_classes(grocery, tmp_path):
    from shitu.grocery import main

    main([str(grocery), str(tmp_path), "--hold-out", "21", "--seed", "3"])

    def labels(name):
        return {line.split("\t")[1] for line in (tmp_path / name).read_text().splitlines()}

    seen, held = labels("seen/train.txt"), labels("held_out/test.txt")
    assert len(held) == 21 and len(seen) == 60 and not seen & held
    assert labels("seen/val.txt") <= seen and labels("seen/iconic.txt") == seen
    assert labels("held_out/train.txt") == held
    with pytest.raises(SystemExit):
        main([str(grocery), str(tmp_path / "x"), "--hold-out", "81"])
