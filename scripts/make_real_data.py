"""Build a *real* multilingual classification data set from the CLDR data that ships in Babel.

Every text is a genuine localized display name from the Unicode CLDR, as packaged by the ``babel``
wheel on PyPI (``babel.Locale``); the label is what the name names:

* ``language``  -- ``Locale.languages``   (e.g. sw "Kijerumani", fr "allemand")
* ``territory`` -- ``Locale.territories`` (sw "Ujerumani", fr "Allemagne")
* ``currency``  -- ``Locale.currencies``  (sw "Yuro", fr "euro")
* ``script``    -- ``Locale.scripts``     (sw "Kilatini", fr "latin")

The language of a row is the CLDR locale it comes from. A name that occurs under two labels in one
locale (fr "latin" is a language and a script) is dropped: its label is ambiguous. Names that a
locale inherits unchanged from English are dropped for the non-English locales, so that every row
is text of its own language. The task is hard in the way real multilingual classification is: the
distinction between "Kijerumani" and "Ujerumani" is morphology the English uncased model has never
seen for Swahili, Yoruba, Turkish or Polish.

Splits: per language, ``VALIDATION_SIZE`` and ``TEST_SIZE`` rows held out (the same for every
language, so per-language scores are comparable), then the training rows are capped per language
(``TRAIN_CAP``) to make the mixture imbalanced as real multilingual data is: en and fr hold about 80%
of the training rows.

Usage::

    python scripts/make_real_data.py --out ~/.cache/langtune_bench/data

writes ``{train,validation,test}/<lang>.jsonl`` with ``text``, ``label``, ``language``. The output is
a pure function of ``--seed`` and the Babel version (recorded in ``meta.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LANGUAGES = ("en", "fr", "sw", "yo", "tr", "pl")
LABELS = ("language", "territory", "currency", "script")
VALIDATION_SIZE = 100
TEST_SIZE = 150
# en and fr keep all their remaining rows (about 1,100 each); the four others 120 each.
TRAIN_CAP = {"en": None, "fr": None, "sw": 120, "yo": 120, "tr": 120, "pl": 120}


def locale_rows(code: str, english: dict[str, set[str]] | None) -> list[tuple[str, str]]:
    """``(text, label)`` pairs of one CLDR locale, unambiguous and (outside en) not English."""
    from babel import Locale

    loc = Locale.parse(code)
    by_label = {
        "language": set(loc.languages.values()),
        "territory": set(loc.territories.values()),
        "currency": set(loc.currencies.values()),
        "script": set(loc.scripts.values()),
    }
    seen: dict[str, set[str]] = {}
    for label, names in by_label.items():
        for name in names:
            seen.setdefault(name.strip(), set()).add(label)
    rows = []
    for text, labels in sorted(seen.items()):
        if not text or len(labels) > 1:
            continue
        (label,) = labels
        if english is not None and text in english[label]:
            continue  # inherited English fallback, not text of this language
        rows.append((text, label))
    return rows


def build(out: Path, seed: int) -> dict[str, dict[str, int]]:
    """Write the splits under ``out``; returns the row counts per split and language."""
    import babel

    english_rows = locale_rows("en", None)
    english = {label: {t for t, lab in english_rows if lab == label} for label in LABELS}
    counts: dict[str, dict[str, int]] = {"train": {}, "validation": {}, "test": {}}
    for i, lang in enumerate(LANGUAGES):
        rows = english_rows if lang == "en" else locale_rows(lang, english)
        order = np.random.default_rng([seed, i]).permutation(len(rows))
        rows = [rows[j] for j in order]
        splits = {
            "test": rows[:TEST_SIZE],
            "validation": rows[TEST_SIZE : TEST_SIZE + VALIDATION_SIZE],
            "train": rows[TEST_SIZE + VALIDATION_SIZE :][: TRAIN_CAP[lang]],
        }
        for split, part in splits.items():
            folder = out / split
            folder.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"text": t, "label": lab, "language": lang}) for t, lab in part]
            (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            counts[split][lang] = len(part)
    meta = {"source": f"babel {babel.__version__} (Unicode CLDR)", "seed": seed, "counts": counts}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/langtune_bench/data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = build(args.out, args.seed)
    train = counts["train"]
    total = sum(train.values())
    for lang in LANGUAGES:
        print(
            f"{lang}: train {train[lang]:5d} ({train[lang] / total:5.1%})  "
            f"validation {counts['validation'][lang]}  test {counts['test'][lang]}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
