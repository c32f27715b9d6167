"""A second *real* multilingual classification set, laid out as a user's CSV files: Django's UI
strings in their human translations, labelled by the Django app that owns them.

Django ships its gettext catalogues (``django/**/locale/<lang>/LC_MESSAGES/django.po``) inside its
wheel on PyPI (BSD licence). A row is one translated message (``msgstr``; the first plural form);
its label is the app the catalogue belongs to: ``core`` (django/conf: dates, languages, form and
validation messages), ``admin``, ``auth``, ``admindocs``, ``humanize``, ``gis``, ``postgres``. The
task is the one a localisation team meets: which component does this string come from. Labels are
imbalanced (core and admin hold about two thirds) and partly ambiguous by nature, as real labels
are. A text that occurs under two apps in one language is dropped (its label is ambiguous).

Languages: de and es keep all their remaining training rows (about 80% of train), sw, tr, pl and
hi 90 each; every language has 60 validation and 80 test rows. The files are
``{train,validation,test}.csv`` with the columns ``lang``, ``app``, ``text`` (not this library's
defaults, as a user's own export would be).

Usage::

    python scripts/make_django_data.py --out ~/.cache/langtune_bench/django   # pip-downloads the
                                                                            # wheel once
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

LANGUAGES = ("de", "es", "hi", "pl", "sw", "tr")
APPS = {
    "conf": "core",
    "contrib/admin": "admin",
    "contrib/auth": "auth",
    "contrib/admindocs": "admindocs",
    "contrib/humanize": "humanize",
    "contrib/gis": "gis",
    "contrib/postgres": "postgres",
}
VALIDATION_SIZE, TEST_SIZE = 60, 80
TRAIN_CAP = {"de": None, "es": None, "hi": 90, "pl": 90, "sw": 90, "tr": 90}
CACHE = Path.home() / ".cache" / "langtune_bench"


def django_wheel(cache: Path) -> Path:
    """The Django wheel in ``cache``, ``pip download``-ed there the first time."""
    wheels = sorted(cache.glob("django-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "django", "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("django-*.whl"))
    return wheels[-1]


def catalogue_rows(wheel: Path) -> dict[str, list[tuple[str, str]]]:
    """``{language: [(app, text)]}`` of every kept app's catalogue, unambiguous texts only."""
    import logging

    from babel.messages.pofile import read_po

    logging.getLogger("babel").setLevel(logging.ERROR)  # plural-count notes of some catalogues
    texts: dict[str, dict[str, set[str]]] = {lang: {} for lang in LANGUAGES}
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if not name.endswith("LC_MESSAGES/django.po") or "locale" not in parts:
                continue
            at = parts.index("locale")
            lang, app = parts[at + 1], "/".join(parts[1:at])
            if lang not in texts or app not in APPS:
                continue
            for message in read_po(io.BytesIO(zf.read(name))):
                text = message.string if isinstance(message.string, str) else message.string[0]
                text = " ".join((text or "").split())
                if message.id and text:
                    texts[lang].setdefault(text, set()).add(APPS[app])
    return {
        lang: sorted((apps.pop(), text) for text, apps in by_text.items() if len(apps) == 1)
        for lang, by_text in texts.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=CACHE / "django")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    wheel = django_wheel(args.cache)
    rng = np.random.default_rng(args.seed)
    splits: dict[str, list[tuple[str, str, str]]] = {"train": [], "validation": [], "test": []}
    counts = {}
    for lang, rows in catalogue_rows(wheel).items():
        rows = [rows[i] for i in rng.permutation(len(rows))]
        test, val = rows[:TEST_SIZE], rows[TEST_SIZE : TEST_SIZE + VALIDATION_SIZE]
        train = rows[TEST_SIZE + VALIDATION_SIZE :][: TRAIN_CAP[lang]]
        for split, part in (("train", train), ("validation", val), ("test", test)):
            splits[split] += [(lang, app, text) for app, text in part]
        counts[lang] = {"train": len(train), "validation": len(val), "test": len(test)}
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with (args.out / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["lang", "app", "text"])
            writer.writerows(rows)
    meta = {"wheel": wheel.name, "seed": args.seed, "rows": counts}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
