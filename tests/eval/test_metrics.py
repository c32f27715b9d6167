"""Per-language metrics against scikit-learn and seqeval on random inputs, plus hand-checked cases."""

import math
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics import precision_score as seqeval_precision
from seqeval.metrics import recall_score as seqeval_recall
from sklearn.metrics import accuracy_score, f1_score

from langtune_jax.eval import (
    PerLanguageAccumulator,
    gap_statistics,
    lm_token_stats,
    per_language_report,
)
from langtune_jax.tasks import IGNORE_INDEX

TOL = 1e-12
LANGS = ["en", "de", "sw", "yo"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
IOBES = TAGS + ["E-PER", "S-PER", "E-LOC", "S-LOC"]


@pytest.fixture(autouse=True)
def _quiet_references():
    # scikit-learn and seqeval warn on ill-defined scores; the warn -> 0 value is what we test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- classification


def _random_classification(rng, n_classes):
    """Per language examples; 'sw' never sees the last two classes, 'yo' has one example."""
    y, p, lang = [], [], []
    for name, n, hi in [("en", 60, n_classes), ("de", 25, n_classes), ("sw", 12, n_classes - 2)]:
        y += list(rng.integers(0, hi, n))
        p += list(rng.integers(0, hi, n))
        lang += [name] * n
    y.append(int(rng.integers(0, n_classes)))
    p.append(int(rng.integers(0, n_classes)))
    lang.append("yo")
    order = rng.permutation(len(y))
    return np.array(y)[order], np.array(p)[order], np.array(lang)[order]


@pytest.mark.parametrize("zero_division", [0.0, 1.0, math.nan])
def test_classification_matches_sklearn(zero_division):
    rng = np.random.default_rng(0)
    n_classes = 5
    names = [f"c{i}" for i in range(n_classes)]
    for _ in range(5):
        y, p, lang = _random_classification(rng, n_classes)
        rep = per_language_report(
            p, y, lang, "sequence-classification", label_names=names, zero_division=zero_division
        )
        sk_zd = np.nan if math.isnan(zero_division) else zero_division
        for name in LANGS + [None]:
            sel = np.ones(len(y), bool) if name is None else lang == name
            got = rep["overall"] if name is None else rep["per_language"][name]
            kw = dict(labels=list(range(n_classes)), zero_division=sk_zd)
            assert got["num_examples"] == sel.sum()
            assert abs(got["accuracy"] - accuracy_score(y[sel], p[sel])) < TOL
            assert abs(got["macro_f1"] - f1_score(y[sel], p[sel], average="macro", **kw)) < TOL
            per_class = f1_score(y[sel], p[sel], average=None, **kw)
            np.testing.assert_allclose(
                [got["per_class_f1"][n] for n in names], per_class, atol=TOL, equal_nan=True
            )


def test_class_absent_from_a_language_scores_zero_division():
    # 'b' has only class 0 in truth and predictions: classes 1 and 2 are undefined for it.
    y, p, lang = [0, 1, 2, 0], [0, 1, 1, 0], ["a", "a", "a", "b"]
    rep = per_language_report(
        p, y, lang, "sequence-classification", label_names=["x", "y", "z"], zero_division=0.0
    )
    assert rep["per_language"]["b"]["per_class_f1"] == {"x": 1.0, "y": 0.0, "z": 0.0}
    assert rep["per_language"]["b"]["macro_f1"] == pytest.approx(1 / 3)
    rep = per_language_report(p, y, lang, "sequence-classification", label_names=["x", "y", "z"])
    assert rep["per_language"]["b"]["macro_f1"] == 1.0  # default: undefined classes left out


def test_default_macro_f1_is_sklearn_default_per_language():
    # Languages that lack some classes (as real multilingual data does): the default report
    # equals scikit-learn's f1_score(average="macro") without labels= for each language.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 300)
    lang = np.array(["a", "b", "c"] * 100)
    y[lang == "b"] = y[lang == "b"] % 3  # 'b' has classes 0-2 only
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    p[lang == "c"] = np.where(p[lang == "c"] == 4, 0, p[lang == "c"])  # 'c' never predicts 4
    rep = per_language_report(p, y, lang, "sequence-classification", label_names=list("vwxyz"))
    for name in ("a", "b", "c"):
        sel = lang == name
        want = f1_score(y[sel], p[sel], average="macro")
        assert abs(rep["per_language"][name]["macro_f1"] - want) < TOL, name


def test_accumulator_batches_and_padding_rows():
    rng = np.random.default_rng(1)
    y, p, lang = _random_classification(rng, 4)
    lang_id = np.array([LANGS.index(x) for x in lang])
    # zero_division=0.0: nan != nan would defeat the dict equality below.
    ref = per_language_report(
        p, y, lang, "sequence-classification", label_names=list("abcd"), zero_division=0.0
    )
    acc = PerLanguageAccumulator("sequence-classification", LANGS, list("abcd"), zero_division=0.0)
    for start in range(0, len(y), 16):
        sl = slice(start, start + 16)
        n = len(y[sl])
        # Pad each batch to 16 rows with garbage that must never count (even invalid ids).
        pad = 16 - n
        logits = np.eye(4)[p[sl]] + 0.1  # [B, C] logits whose argmax is p
        acc.update(
            np.concatenate([logits, np.full((pad, 4), 9.0)]),
            np.concatenate([y[sl], np.full(pad, 99)]),
            np.concatenate([lang_id[sl], np.full(pad, -1)]),
            np.concatenate([np.ones(n), np.zeros(pad)]),
        )
    got = acc.compute()
    assert got["per_language"] == ref["per_language"]
    assert got["overall"] == ref["overall"]
    assert got["gaps"] == ref["gaps"]


def test_language_with_one_example_and_empty_language():
    acc = PerLanguageAccumulator("sequence-classification", ["en", "fr", "xx"], num_labels=3)
    acc.update(np.array([2, 1, 0]), np.array([2, 1, 1]), np.array([0, 0, 1]))
    rep = acc.compute()
    assert rep["languages"] == ["en", "fr"] and rep["empty_languages"] == ["xx"]
    fr = rep["per_language"]["fr"]
    assert fr["num_examples"] == 1 and fr["accuracy"] == 0.0
    # sklearn on the one example: class 1 (true) and 0 (predicted) both score 0, class 2 is absent.
    assert fr["macro_f1"] == f1_score([1], [0], average="macro", labels=[0, 1, 2]) == 0.0


# --------------------------------------------------------------------------- entities


def _random_tags(rng, n, tags, max_len=14, p_o=0.45):
    probs = [p_o] + [(1 - p_o) / (len(tags) - 1)] * (len(tags) - 1)
    return [list(rng.choice(tags, int(rng.integers(0, max_len)), p=probs)) for _ in range(n)]


def _check_against_seqeval(rep, y, p, lang):
    for name in rep["languages"]:
        yy = [s for s, x in zip(y, lang) if x == name]
        pp = [s for s, x in zip(p, lang) if x == name]
        got = rep["per_language"][name]
        assert abs(got["f1"] - seqeval_f1(yy, pp)) < TOL, name
        assert abs(got["precision"] - seqeval_precision(yy, pp)) < TOL, name
        assert abs(got["recall"] - seqeval_recall(yy, pp)) < TOL, name
    assert abs(rep["overall"]["f1"] - seqeval_f1(y, p)) < TOL


@pytest.mark.parametrize("tags", [TAGS, IOBES], ids=["iob2", "iobes"])
def test_entity_f1_matches_seqeval(tags):
    rng = np.random.default_rng(2)
    for _ in range(8):
        # Random tags include I- without B- and type switches inside chunks (seqeval's lenient
        # default mode starts a new chunk there).
        y, p = _random_tags(rng, 40, tags), []
        p = [list(rng.choice(tags, len(s))) if rng.random() < 0.7 else list(s) for s in y]
        lang = list(rng.choice(["en", "de", "sw"], len(y)))
        y.append(["O"] * 5)  # 'yo': one example, all-O truth, one spurious prediction
        p.append(["O", "B-PER", "O", "O", "O"])
        lang.append("yo")
        rep = per_language_report(p, y, lang, "token-classification", label_names=tags)
        _check_against_seqeval(rep, y, p, lang)
        assert rep["per_language"]["yo"]["f1"] == 0.0


def test_entity_hand_cases():
    # I- without B- opens an entity (conlleval); a type switch inside I- splits it.
    y = [["I-PER", "I-PER", "O", "B-LOC", "I-ORG"]]
    p = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    rep = per_language_report(p, y, ["en"], "token-classification", label_names=TAGS)
    en = rep["per_language"]["en"]
    # truth: PER(0-1), LOC(3-3), ORG(4-4); prediction: PER(0-1), LOC(3-4) -> 1 correct.
    assert (en["num_true_entities"], en["num_pred_entities"]) == (3, 2)
    assert en["precision"] == 0.5 and en["recall"] == pytest.approx(1 / 3)
    assert en["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert en["per_type_f1"] == {"LOC": 0.0, "ORG": 0.0, "PER": 1.0}
    # All-O truth and predictions: no entities at all; seqeval scores 0.
    rep = per_language_report([["O", "O"]], [["O", "O"]], ["en"], "token-classification")
    assert rep["per_language"]["en"]["f1"] == seqeval_f1([["O", "O"]], [["O", "O"]]) == 0.0
    assert rep["per_language"]["en"]["token_accuracy"] == 1.0


def test_entity_accumulator_ignores_subwords_and_padding_rows():
    rng = np.random.default_rng(3)
    n, width = 50, 16
    y = _random_tags(rng, n, TAGS, max_len=10)
    p = [list(rng.choice(TAGS, len(s))) for s in y]
    lang = rng.integers(0, 3, n)
    index = {t: i for i, t in enumerate(TAGS)}
    acc = PerLanguageAccumulator("token-classification", LANGS[:3], TAGS)
    for start in range(0, n, 8):
        rows = range(start, min(start + 8, n))
        labels = np.full((8, width), IGNORE_INDEX)
        preds = rng.integers(0, len(TAGS), (8, width))  # garbage at ignored positions
        for b, i in enumerate(rows):
            # Word-piece layout: each word's first piece carries the label, continuation pieces
            # (and the padding) are -100 and must not split or join entities.
            pos = 1 + np.sort(rng.choice(np.arange(width - 2), len(y[i]), replace=False))
            labels[b, pos] = [index[t] for t in y[i]]
            preds[b, pos] = [index[t] for t in p[i]]
        mask = np.arange(8) < len(rows)
        lang_id = np.where(mask, np.pad(lang[start : start + 8], (0, 8 - len(rows))), 7)
        acc.update(preds, labels, lang_id, mask)
    rep = acc.compute()
    _check_against_seqeval(rep, y, p, [LANGS[i] for i in lang])
    tokens = sum(len(s) for s in y)
    right = sum(a == b for s, t in zip(y, p) for a, b in zip(s, t))
    assert rep["overall"]["num_tokens"] == tokens
    assert rep["overall"]["token_accuracy"] == pytest.approx(right / tokens)


def test_bad_tags_are_rejected():
    with pytest.raises(ValueError, match="'PER'"):
        PerLanguageAccumulator("token-classification", ["en"], ["O", "PER"])


# --------------------------------------------------------------------------- causal LM


def test_perplexity_matches_direct_computation():
    rng = np.random.default_rng(4)
    b, t, v = 9, 7, 11
    logits = rng.normal(size=(b, t, v)) * 3
    labels = rng.integers(0, v, (b, t))
    labels[rng.random((b, t)) < 0.3] = IGNORE_INDEX
    lang = rng.integers(0, 2, b)
    rep = per_language_report(logits, labels, [LANGS[i] for i in lang], "causal-lm")
    for li, name in enumerate(LANGS[:2]):
        nll, right, count = 0.0, 0, 0
        for i in np.nonzero(lang == li)[0]:
            for j in range(t):
                if labels[i, j] != IGNORE_INDEX:
                    nll += logsumexp(logits[i, j]) - logits[i, j, labels[i, j]]
                    right += int(np.argmax(logits[i, j]) == labels[i, j])
                    count += 1
        got = rep["per_language"][name]
        assert got["num_tokens"] == count
        assert got["loss"] == pytest.approx(nll / count, rel=1e-12)
        assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-12)
        assert got["token_accuracy"] == pytest.approx(right / count)
    assert rep["primary_metric"] == "perplexity"
    assert rep["gaps"]["perplexity"]["best"] == min(
        r["perplexity"] for r in rep["per_language"].values()
    )
    # The same numbers from per-example sums reduced "on device", in two batches with padding.
    nll, pred = lm_token_stats(logits, labels)
    valid = labels != IGNORE_INDEX
    acc = PerLanguageAccumulator("causal-lm", LANGS[:2])
    for sl in (slice(0, 5), slice(5, None)):
        acc.update_lm_totals(
            np.append(nll[sl].sum(-1), 1e9),
            np.append(valid[sl].sum(-1), 3),
            np.append((valid & (pred == labels))[sl].sum(-1), 3),
            np.append(lang[sl], 0),
            np.append(np.ones(len(lang[sl])), 0),
        )
    got = acc.compute()
    for name in LANGS[:2]:
        for key in ("loss", "perplexity", "token_accuracy", "num_tokens"):
            assert got["per_language"][name][key] == pytest.approx(rep["per_language"][name][key])


# --------------------------------------------------------------------------- gaps


def test_gap_statistics_by_hand():
    scores = {"en": 0.9, "de": 0.8, "sw": 0.5, "yo": 0.6}
    g = gap_statistics(scores, source_language="en")
    assert g["best_language"] == "en" and g["best"] == 0.9
    assert g["worst_language"] == "sw" and g["worst"] == 0.5
    assert g["mean"] == pytest.approx(0.7)
    assert g["gap"] == pytest.approx(0.4)
    assert g["relative_gap_pct"] == pytest.approx(100 * 0.4 / 0.9)
    # population std: deviations .2 .1 -.2 -.1 -> sqrt((.04+.01+.04+.01)/4)
    assert g["std"] == pytest.approx(math.sqrt(0.1 / 4))
    assert g["transfer_gap"] == pytest.approx(0.9 - (0.8 + 0.5 + 0.6) / 3)
    assert g["num_languages"] == 4
    lower = gap_statistics({"en": 12.0, "sw": 30.0, "xx": None}, higher_is_better=False)
    assert (lower["best_language"], lower["worst_language"], lower["gap"]) == ("en", "sw", 18.0)
    assert lower["num_languages"] == 2 and "transfer_gap" not in lower
    with pytest.raises(ValueError, match="'fr'"):
        gap_statistics(scores, source_language="fr")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown task 'ner'"):
        PerLanguageAccumulator("ner", ["en"], TAGS)
    acc = PerLanguageAccumulator("sequence-classification", ["en"], num_labels=2)
    with pytest.raises(ValueError, match="language_id 3 out of range"):
        acc.update(np.array([0]), np.array([1]), np.array([3]))
    with pytest.raises(ValueError, match="id 5 outside"):
        acc.update(np.array([0]), np.array([5]), np.array([0]))


def test_merge_and_language_order():
    rng = np.random.default_rng(5)
    y = _random_tags(rng, 30, TAGS)
    p = [list(rng.choice(TAGS, len(s))) for s in y]
    lang = list(rng.choice(["en", "de"], 30))
    ref = per_language_report(
        p, y, lang, "token-classification", label_names=TAGS, language_order=["sw", "en", "de"]
    )
    assert ref["languages"] == ["en", "de"] and ref["empty_languages"] == ["sw"]
    accs = []
    index = {t: i for i, t in enumerate(TAGS)}
    for sl in (slice(0, 15), slice(15, None)):
        acc = PerLanguageAccumulator("token-classification", ["sw", "en", "de"], TAGS)
        width = max(len(s) for s in y)
        ids = [np.array([index[t] for t in s] + [IGNORE_INDEX] * (width - len(s))) for s in y[sl]]
        pids = [np.array([index[t] for t in s] + [0] * (width - len(s))) for s in p[sl]]
        acc.update(np.stack(pids), np.stack(ids), [["sw", "en", "de"].index(x) for x in lang[sl]])
        accs.append(acc)
    merged = accs[0].merge(accs[1]).compute()
    assert merged["per_language"] == ref["per_language"] and merged["overall"] == ref["overall"]
    with pytest.raises(ValueError, match="different set-ups"):
        accs[0].merge(PerLanguageAccumulator("token-classification", ["en"], TAGS))


def test_mapping_update_as_the_eval_step_gives_it():
    # Classification: {"predictions", "labels", "language_id", "example_mask"}.
    acc = PerLanguageAccumulator("sequence_classification", ["en", "de"], ["a", "b"])
    assert acc.task == "sequence-classification"  # '_' accepted for '-'
    acc.update(
        {
            "predictions": np.array([1, 0, 1, 1]),
            "labels": np.array([1, 1, 0, 0]),  # padding rows carry label 0
            "language_id": np.array([0, 1, 1, 0]),
            "example_mask": np.array([1, 1, 1, 0]),
            "input_ids": np.zeros((4, 3)),  # other batch keys are ignored
        }
    )
    rep = acc.compute(source_language="en")
    assert rep["per_language"]["en"]["accuracy"] == 1.0
    assert rep["per_language"]["de"]["accuracy"] == 0.0
    assert rep["gaps"]["accuracy"]["transfer_gap"] == 1.0
    # Causal LM: per-example sums from the jitted step (counts as float32).
    acc = PerLanguageAccumulator("causal-lm", ["en", "de"])
    acc.update(
        {
            "nll_sum": np.array([6.0, 2.0, 99.0], np.float32),
            "token_count": np.array([3, 2, 7], np.float32),
            "correct": np.array([1, 2, 7], np.float32),
            "language_id": np.array([0, 1, 0]),
            "example_mask": np.array([1, 1, 0]),
        }
    )
    rep = acc.compute()
    assert rep["per_language"]["en"]["perplexity"] == pytest.approx(math.exp(2.0))
    assert rep["per_language"]["de"]["token_accuracy"] == 1.0
    assert rep["overall"]["loss"] == pytest.approx(8.0 / 5)
    with pytest.raises(ValueError, match=r"lacks \['predictions'\]"):
        PerLanguageAccumulator("token-classification", ["en"], TAGS).update(
            {"labels": np.zeros((1, 2)), "language_id": np.zeros(1)}
        )
