"""Galleries come as label folders or PaddleClas-style list files."""

import pytest

from shitu.errors import ShituError
from shitu.gallery import read_gallery
from tests.conftest import solid


def test_folder_labels_keep_spaces_and_accents(colour_gallery):
    items = read_gallery(colour_gallery)
    assert {i.label for i in items} == {"red apple", "Crème Fraîche", "blue can"}
    assert "Crème Fraîche/deeper/shot 1.jpg" in {i.relpath for i in items}
    assert len(items) == 6


def test_symlink_loop_is_cut(tmp_path):
    root = tmp_path / "g"
    solid(root / "a" / "x.png", (1, 2, 3))
    (root / "a" / "loop").symlink_to(root / "a")
    assert [i.relpath for i in read_gallery(root)] == ["a/x.png"]


def test_list_file_with_tabs_and_spaces(tmp_path):
    solid(tmp_path / "img" / "one photo.png", (1, 2, 3))
    solid(tmp_path / "img" / "b.png", (1, 2, 3))
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nimg/one photo.png\tsparkling water\n\nimg/b.png 7\n", encoding="utf-8")
    items = read_gallery(tmp_path, listing)
    assert [(i.relpath, i.label) for i in items] == [("img/b.png", "7"), ("img/one photo.png", "sparkling water")]


@pytest.mark.parametrize("line", ["../outside.png\tx", "/etc/passwd\tx", "a/../../b.png\tx"])
def test_list_paths_outside_the_root_are_refused(tmp_path, line):
    listing = tmp_path / "list.txt"
    listing.write_text(line + "\n")
    with pytest.raises(ShituError, match="outside the gallery root"):
        read_gallery(tmp_path, listing)


def test_list_line_without_label(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("lonely.png\n")
    with pytest.raises(ShituError, match="line 1"):
        read_gallery(tmp_path, listing)


def test_missing_and_empty_galleries(tmp_path):
    with pytest.raises(ShituError, match="not found"):
        read_gallery(tmp_path / "nope")
    (tmp_path / "empty" / "label").mkdir(parents=True)
    with pytest.raises(ShituError, match="no images"):
        read_gallery(tmp_path / "empty")


def test_several_list_files_name_each_photo_once(tmp_path):
    root = tmp_path / "g"
    for name in ("a.png", "b.png", "c.png"):
        solid(root / name, (9, 9, 9))
    (tmp_path / "one.txt").write_text("a.png\tKiwi\nb.png\tKiwi\n")
    (tmp_path / "two.txt").write_text("b.png\tKiwi\nc.png\tLime\n")  # b.png again, same label: taken once
    items = read_gallery(root, [tmp_path / "one.txt", tmp_path / "two.txt"])
    assert [(i.relpath, i.label) for i in items] == [("a.png", "Kiwi"), ("b.png", "Kiwi"), ("c.png", "Lime")]


def test_list_files_that_disagree_on_a_label_are_refused(tmp_path):
    root = tmp_path / "g"
    solid(root / "a.png", (9, 9, 9))
    (tmp_path / "one.txt").write_text("a.png\tKiwi\n")
    (tmp_path / "two.txt").write_text("a.png\tLime\n")
    with pytest.raises(ShituError, match="'a.png' is 'Kiwi' in .*one.txt but 'Lime' in .*two.txt"):
        read_gallery(root, [tmp_path / "one.txt", tmp_path / "two.txt"])


def test_a_list_file_naming_a_photo_twice_is_a_mistake(tmp_path):
    root = tmp_path / "g"
    solid(root / "a.png", (9, 9, 9))
    (tmp_path / "one.txt").write_text("a.png\tKiwi\na.png\tKiwi\n")
    with pytest.raises(ShituError, match="already listed on line 1"):
        read_gallery(root, tmp_path / "one.txt")
