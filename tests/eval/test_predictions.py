"""Per-example predictions (`predictions.jsonl`): mapped back through `example_index` whatever
the batch order, every example once, and the one-class warning."""

import json

import numpy as np
import pytest

from langtune_jax.eval import PredictionLog, one_class_note, write_predictions

LABELS = ["neg", "pos", "mixed"]
ORDER = [("en", 0), ("en", 1), ("en", 2), ("sw", 0), ("sw", 1)]


def _text(language, row):
    return f"{language}-{row}"


def test_rows_follow_the_split_order_whatever_the_batch_order():
    log = PredictionLog("sequence-classification", LABELS)
    # two batches in a packed (shuffled) order, with a filler (-1) and a masked slot
    log.add({"example_index": np.array([3, 0, -1]), "predictions": np.array([1, 0, 2]),
             "labels": np.array([1, 1, 0]), "example_mask": np.array([1, 1, 0])})  # fmt: skip
    log.add({"example_index": np.array([4, 2, 1, 0]), "predictions": np.array([2, 2, 1, 1]),
             "labels": np.array([2, 0, 1, 1]), "example_mask": np.array([1, 1, 1, 0])})  # fmt: skip
    rows = log.rows(ORDER, _text)
    assert [(r["language"], r["index"], r["text"]) for r in rows] == [
        (g, r, f"{g}-{r}") for g, r in ORDER
    ]
    assert [(r["label"], r["prediction"], r["correct"]) for r in rows] == [
        ("pos", "neg", False),
        ("pos", "pos", True),
        ("neg", "mixed", False),
        ("pos", "pos", True),
        ("mixed", "mixed", True),
    ]


def test_missing_or_repeated_examples_are_an_error():
    log = PredictionLog("sequence-classification", LABELS)
    log.add({"example_index": np.array([0, 1, 1, 2]), "predictions": np.zeros(4, int),
             "labels": np.zeros(4, int)})  # fmt: skip
    with pytest.raises(RuntimeError, match="4 distinct of 5|3 distinct of 5"):
        log.rows(ORDER, _text)
    with pytest.raises(ValueError, match="example_index"):
        log.add({"predictions": np.zeros(2, int), "labels": np.zeros(2, int)})
    with pytest.raises(ValueError, match="causal-lm"):
        PredictionLog("causal-lm", [])


def test_token_rows_keep_the_labelled_positions_and_write_as_json_lines(tmp_path):
    tags = ["O", "B-PER", "I-PER"]
    log = PredictionLog("token-classification", tags)
    log.add({"example_index": np.array([1, 0]),
             "predictions": np.array([[0, 1, 0, 0], [0, 0, 0, 0]]),
             "labels": np.array([[-100, 1, 2, -100], [-100, 0, -100, -100]])})  # fmt: skip
    rows = log.rows([("en", 0), ("en", 1)], _text)
    assert rows[0]["labels"] == ["O"] and rows[0]["predictions"] == ["O"] and rows[0]["correct"]
    assert rows[1]["labels"] == ["B-PER", "I-PER"] and rows[1]["predictions"] == ["B-PER", "O"]
    assert not rows[1]["correct"]
    path = write_predictions(tmp_path / "eval" / "predictions.jsonl", rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_one_class_note_names_a_classifier_that_predicts_one_class():
    rows = [{"label": lab, "prediction": "pos"} for lab in ("pos", "neg", "pos")]
    note = one_class_note(rows, "test")
    assert "class 'pos' for all 3 examples" in note and "2 classes" in note
    assert "learning_rate" in note
    assert one_class_note([{**r, "prediction": p} for r, p in zip(rows, "ab")], "test") is None
    same_truth = [{"label": "pos", "prediction": "pos"}] * 3  # one class in the data: fine
    assert one_class_note(same_truth, "test") is None
    tokens = [{"labels": ["O", "B-PER"], "predictions": ["O", "O"]}]
    assert "tag 'O' for all 2 labelled tokens" in one_class_note(tokens, "validation")
