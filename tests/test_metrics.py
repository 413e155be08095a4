"""Retrieval metrics against answers worked out by hand."""

import numpy as np
import pytest

from shitu.errors import ShituError
from shitu.metrics import evaluate, needed_depth, parse_metric, recall_at_1_of_vectors


def test_recall_and_map_at_r_by_hand():
    gallery = ["a", "a", "a", "b", "b"]
    queries = ["a", "b"]
    ranked = [["a", "b", "a", "a"], ["a", "b", "a", "b"]]
    result = evaluate(ranked, queries, gallery, ["recall@1", "recall@2", "map@r"])
    assert result["recall@1"] == 0.5  # query a right at rank 1, query b wrong
    assert result["recall@2"] == 1.0
    # a: R=3, hits at ranks 1 and 3 -> (1/1 + 2/3) / 3 ; b: R=2, hit at rank 2 -> (1/2) / 2
    assert result["map@r"] == pytest.approx(((1 + 2 / 3) / 3 + 0.25) / 2)


def test_lone_queries_are_left_out():
    result = evaluate([["a"], ["a"]], ["a", "z"], ["a", "a"], ["recall@1"])
    assert result["recall@1"] == 1.0 and result["queries"] == 1 and result["lone_queries"] == 1


def test_leave_one_out_drops_singletons():
    # In leave-one-out a label with one gallery image has nothing left to find.
    result = evaluate([["a"], ["a"], ["a"]], ["a", "a", "s"], ["a", "a", "s"], ["recall@1"], leave_one_out=True)
    assert result["queries"] == 2 and result["recall@1"] == 1.0


@pytest.mark.parametrize("bad", ["recall@0", "recall", "precision@1", "map"])
def test_bad_metric_names(bad):
    with pytest.raises(ShituError, match="unknown metric"):
        parse_metric(bad)


def test_metric_names_are_case_insensitive():
    assert parse_metric("Recall@5") == "recall@5" and parse_metric("MAP@R") == "map@r"


def test_recall_at_1_of_vectors_never_matches_a_photo_with_itself():
    # photos 0 and 1 are "a", 2 is "b"; photo 1's nearest other photo is 2 (a "b"), photo 2's is 1
    vectors = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = ["a", "a", "b"]
    # b has no other member, so it is a lone query: a's two photos count, one right (0 -> 1), one wrong
    assert recall_at_1_of_vectors(vectors, labels, vectors, labels, leave_one_out=True) == 0.5
    assert recall_at_1_of_vectors(vectors[:1], ["a"], vectors[1:], ["a", "b"]) == 1.0



def test_map_at_r_counts_neighbours_an_approximate_index_did_not_return_as_misses():
    # R = 3 for label a, but only one neighbour came back (IVF probing too few lists): 1/3, no crash.
    result = evaluate([["a"], ["b", "a", "a"]], ["a", "a"], ["a", "a", "a"], ["map@r"])
    assert result["map@r"] == pytest.approx((1 / 3 + (1 / 2 + 2 / 3) / 3) / 2)


def test_needed_depth_of_an_empty_gallery_is_one_not_a_crash():
    assert needed_depth(["map@r"], [], leave_one_out=True) == 1
