"""Build the shipped demo data set: a *synthetic* five-language topic classification corpus.

Nothing here is real language data. Every word except the shared anchors is a pseudo-word made up
by this script from a per-language syllable inventory that only imitates the sound of English (en),
Spanish (es), Swahili (sw), Yoruba (yo) and Quechua (qu); the language codes are labels for five
made-up lexicons. What the languages share is the *structure*:

* one concept inventory: five topics (``sports``, ``weather``, ``food``, ``travel``, ``money``),
  each with its own nouns, verbs and adjectives, plus generic words (pronouns, time words, function
  words) that carry no topic;
* one sentence grammar (clauses with subject, verb, object, place, time), rendered per language
  with its own word order (SVO, SOV, noun-adjective order, postpositions) and morphology (plural and
  tense affixes or particles);
* shared anchors spelled the same everywhere: numbers, person and place names and a few loan words
  (``taxi``, ``pizza``, ``dollar``...), which let masked-LM pretraining align the lexicons.

A sentence mentions two or three words of its topic, at most one distractor word of another topic,
and generic filler, and 5% of the labels are flipped at random, so no single keyword solves it.
The training split is imbalanced like real multilingual data (en and es hold 80% of it); the
validation and test splits have the same size for every language so per-language scores are
comparable.

Usage::

    python scripts/make_demo_data.py               # writes demo/data/{train,validation,test}/
    python scripts/make_demo_data.py --out /tmp/d  # somewhere else

The output is a pure function of ``--seed`` (numpy ``SeedSequence`` streams per language and split;
no Python ``hash``), so re-running it reproduces the shipped files byte for byte.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LANGUAGES = ("en", "es", "sw", "yo", "qu")
LABELS = ("sports", "weather", "food", "travel", "money")
# Train sizes mirror a real imbalance: two languages hold 80% of the examples, three share 20%.
TRAIN_SIZES = {"en": 2400, "es": 1600, "sw": 400, "yo": 330, "qu": 270}
VALIDATION_SIZE = 100  # per language
TEST_SIZE = 200  # per language
LABEL_NOISE = 0.05
SEED = 1234

# --- concept inventory (English glosses are concept ids, not the English lexicon) -------------
TOPIC_NOUNS = {
    "sports": "team match ball coach player stadium race trophy referee fans season league",
    "weather": "rain wind storm cloud sun snow sky flood heat forecast thunder fog",
    "food": "bread rice soup meat fruit kitchen meal salt pot dinner sugar cook",
    "travel": "bus airport ticket road journey map bridge passport station luggage boat port",
    "money": "bank price loan salary market tax coin debt shop profit budget wallet",
}
TOPIC_VERBS = {
    "sports": "win score kick play",
    "weather": "pour blow shine freeze",
    "food": "eat boil taste fry",
    "travel": "travel drive arrive fly",
    "money": "pay buy sell save",
}
TOPIC_ADJS = {
    "sports": "fast strong",
    "weather": "cold wet",
    "food": "sweet hungry",
    "travel": "far late",
    "money": "rich expensive",
}
GENERIC_NOUNS = "house day thing man woman news work school street friend child teacher family city"
GENERIC_VERBS = "see want say like hear know think need"
GENERIC_ADJS = "good bad big small new old many very"
PRONOUNS = "i you he she we they people"
TIMES = "today yesterday tomorrow morning evening night week year"
FUNCTION = "the a this in on with for and but because not of"

# --- shared anchors: spelled identically in every language ------------------------------------
NAMES = "maria kofi amina juan ana pedro wanjiru tupac lucia ade john ines".split()
PLACES = "lima lagos nairobi madrid london cusco mombasa ibadan sevilla boston".split()
LOANS = {
    "sports": ["football", "olympics"],
    "weather": ["celsius", "tornado"],
    "food": ["pizza", "chocolate"],
    "travel": ["taxi", "hotel"],
    "money": ["dollar", "euro"],
}
GENERIC_LOANS = ["internet", "radio", "telephone", "computer"]

# --- per-language phonotactics for the pseudo-word lexicons -----------------------------------
# onsets, vowels, codas, syllables per word (choices). Only the *sound* is imitated.
PHONOTACTICS = {
    "en": (
        "b d f g h k l m n p r s t w st tr bl gr sh ch th pl fr".split(),
        "a e i o u ea oo ai".split(),
        ["", "", "n", "t", "s", "k", "d", "l", "r", "nd", "ng", "st"],
        (1, 1, 2),
    ),
    "es": (
        "b c d f g l m n p r s t v ll ch br tr pr".split(),
        "a e i o u ue ie".split(),
        ["", "", "", "", "n", "s", "r", "l"],
        (2, 2, 3),
    ),
    "sw": (
        "m n k w ch j z mb nd ng sh t p b l h y".split(),
        "a e i o u".split(),
        [""],
        (2, 3, 3),
    ),
    "yo": (
        "b d f g gb k l m n r s ṣ t w y j".split(),
        "a e ẹ i o ọ u".split(),
        ["", "", "", "n"],
        (2, 2, 3),
    ),
    "qu": (
        "k q ch ll p t w y s m n r h ph qh".split(),
        "a i u".split(),
        ["", "", "", "y", "q", "n", "r"],
        (2, 3, 3),
    ),
}

# Grammar per language. ``np``: order inside a noun phrase (D det, A adj, N noun).
# ``clause``: order of roles. ``plural``/``past``/``future``: how the marker is realised
# (``suffix:x``, ``prefix:x`` or ``word:x`` for a separate particle before the word).
# ``postpositions``: qu marks place/companion with a suffix on the noun instead of a preposition.
GRAMMAR = {
    "en": dict(
        np="DAN",
        clause=("S", "V", "O", "L", "T"),
        plural="suffix:s",
        past="suffix:ed",
        future="word:will",
    ),
    "es": dict(
        np="DNA",
        clause=("T", "S", "V", "O", "L"),
        plural="suffix:es",
        past="suffix:o",
        future="suffix:ra",
    ),
    "sw": dict(
        np="NAD",
        clause=("S", "V", "O", "L", "T"),
        plural="prefix:wa",
        past="prefix:ali",
        future="prefix:ta",
    ),
    "yo": dict(
        np="NAD",
        clause=("S", "T", "V", "O", "L"),
        plural="word:awọn",
        past="word:ti",
        future="word:yoo",
    ),
    "qu": dict(
        np="DAN",
        clause=("T", "S", "O", "L", "V"),
        plural="suffix:kuna",
        past="suffix:rqa",
        future="suffix:nqa",
        postpositions=True,
    ),
}
QU_CASE = {"in": "pi", "on": "pi", "with": "wan", "for": "paq", "of": "pa"}


def _split(words: str) -> list[str]:
    return words.split()


def concept_inventory() -> dict[str, list[str]]:
    """All concept ids, grouped by role (topic roles keyed ``noun:<label>`` etc.)."""
    inv: dict[str, list[str]] = {}
    for label in LABELS:
        inv[f"noun:{label}"] = _split(TOPIC_NOUNS[label])
        inv[f"verb:{label}"] = _split(TOPIC_VERBS[label])
        inv[f"adj:{label}"] = _split(TOPIC_ADJS[label])
    inv["noun"] = _split(GENERIC_NOUNS)
    inv["verb"] = _split(GENERIC_VERBS)
    inv["adj"] = _split(GENERIC_ADJS)
    inv["pron"] = _split(PRONOUNS)
    inv["time"] = _split(TIMES)
    inv["func"] = _split(FUNCTION)
    return inv


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _pseudo_word(rng: np.random.Generator, lang: str) -> str:
    onsets, vowels, codas, n_syll = PHONOTACTICS[lang]
    n = int(rng.choice(n_syll))
    parts = []
    for i in range(n):
        parts.append(str(rng.choice(onsets)) + str(rng.choice(vowels)))
        if i == n - 1 or rng.random() < 0.2:
            parts.append(str(rng.choice(codas)))
    return "".join(parts)


def build_lexicons(seed: int = SEED) -> dict[str, dict[str, str]]:
    """Map every concept id to one pseudo-word per language.

    Words are unique across all languages and never equal an anchor, so the only surface forms
    two languages share are the anchors (names, places, numbers, loan words).

    Returns:
      ``{language: {concept_id: word}}``.
    """
    concepts = sorted({c for words in concept_inventory().values() for c in words})
    taken = set(NAMES) | set(PLACES) | set(GENERIC_LOANS)
    taken |= {w for loans in LOANS.values() for w in loans}
    lexicons: dict[str, dict[str, str]] = {}
    for li, lang in enumerate(LANGUAGES):
        rng = _rng(seed, 1, li)
        lex: dict[str, str] = {}
        for concept in concepts:
            # Function words and pronouns are short, as in real languages.
            short = concept in concept_inventory()["func"] or concept in PRONOUNS.split()
            while True:
                word = _pseudo_word(rng, lang)
                if short and len(word) > 5:
                    continue
                if len(word) >= 2 and word not in taken:
                    break
            taken.add(word)
            lex[concept] = word
        lexicons[lang] = lex
    return lexicons


class _Renderer:
    """Render one abstract sentence (a list of clauses over concept ids) in one language."""

    def __init__(self, lang: str, lexicon: dict[str, str]):
        self.lang = lang
        self.lex = lexicon
        self.g = GRAMMAR[lang]

    def _mark(self, word: str, rule: str) -> list[str]:
        kind, affix = rule.split(":")
        if kind == "suffix":
            return [word + affix]
        if kind == "prefix":
            return [affix + word]
        return [affix, word]

    def word(self, concept: str) -> str:
        return self.lex.get(concept, concept)  # anchors render as themselves

    def noun_phrase(self, np_: dict, case: str | None = None) -> list[str]:
        noun = np_["noun"]
        noun_words = [self.word(noun)]
        if np_.get("plural") and noun in self.lex:
            noun_words = self._mark(noun_words[0], self.g["plural"])
        if np_.get("number") is not None:
            noun_words = [str(np_["number"]), *noun_words]
        slots = {
            "D": [self.word(np_["det"])] if np_.get("det") else [],
            "A": [self.word(np_["adj"])] if np_.get("adj") else [],
            "N": noun_words,
        }
        out = [w for key in self.g["np"] for w in slots[key]]
        if case is not None:
            if self.g.get("postpositions"):
                out[-1] = out[-1] + QU_CASE[case]
            else:
                out = [self.word(case), *out]
        return out

    def clause(self, cl: dict) -> list[str]:
        verb = [self.word(cl["verb"])]
        if cl.get("tense") in ("past", "future"):
            verb = self._mark(verb[0], self.g[cl["tense"]])
        if cl.get("neg"):
            verb = [self.word("not"), *verb]
        roles = {
            "S": self.noun_phrase(cl["subj"]) if isinstance(cl["subj"], dict) else [cl["subj"]],
            "V": verb,
            "O": self.noun_phrase(cl["obj"]),
            "L": self.noun_phrase(cl["loc"], case=cl["loc_case"]) if cl.get("loc") else [],
            "T": [self.word(cl["time"])] if cl.get("time") else [],
        }
        if isinstance(cl["subj"], str) and cl["subj"] in self.lex:
            roles["S"] = [self.word(cl["subj"])]
        return [w for key in self.g["clause"] for w in roles[key]]

    def sentence(self, clauses: list[dict], conj: str | None) -> str:
        words = self.clause(clauses[0])
        if len(clauses) > 1:
            words += [self.word(conj or "and"), *self.clause(clauses[1])]
        return " ".join(words)


def _abstract_sentence(rng: np.random.Generator, label: str) -> tuple[list[dict], str]:
    """Sample one language-independent sentence for ``label``: clauses over concept ids."""
    inv = concept_inventory()
    others = [lab for lab in LABELS if lab != label]
    n_clauses = 1 if rng.random() < 0.45 else 2
    # Content slots per clause: verb, object noun, object adjective, place noun.
    slots = [(c, role) for c in range(n_clauses) for role in ("verb", "noun", "adj", "loc")]
    n_topic = min(int(rng.choice([2, 2, 3, 3])), len(slots) - 1)
    n_distract = min(int(rng.choice([0, 0, 0, 1])), len(slots) - n_topic)
    order = rng.permutation(len(slots))
    topic_of = {}
    for k, idx in enumerate(order[: n_topic + n_distract]):
        topic_of[slots[idx]] = label if k < n_topic else str(rng.choice(others))

    def pick(clause: int, role: str) -> str:
        topic = topic_of.get((clause, role))
        pool_role = "noun" if role == "loc" else role
        if topic is not None:
            return str(rng.choice(inv[f"{pool_role}:{topic}"]))
        if role == "loc" and rng.random() < 0.35:
            return str(rng.choice(PLACES))
        return str(rng.choice(inv[pool_role]))

    clauses = []
    for c in range(n_clauses):
        r = rng.random()
        if r < 0.3:
            subj: str | dict = str(rng.choice(NAMES))
        elif r < 0.75:
            subj = str(rng.choice(inv["pron"]))
        else:
            subj = {"noun": str(rng.choice(inv["noun"])), "det": "the"}
        obj = {
            "noun": pick(c, "noun"),
            "det": ["the", "a", "this", None][int(rng.integers(4))],
            "plural": bool(rng.random() < 0.3),
        }
        if (c, "adj") in topic_of or rng.random() < 0.4:
            obj["adj"] = pick(c, "adj")
        if rng.random() < 0.2:
            obj["number"] = int(rng.choice([2, 3, 5, 7, 10, 12, 20, 100, 2024]))
        if rng.random() < 0.15:  # loan words: mostly of the topic, sometimes a distractor
            loan_topic = label if rng.random() < 0.7 else str(rng.choice(others))
            pool = LOANS[loan_topic] + (GENERIC_LOANS if rng.random() < 0.3 else [])
            obj["noun"] = str(rng.choice(pool))
        cl = {
            "subj": subj,
            "verb": pick(c, "verb"),
            "obj": obj,
            "tense": str(rng.choice(["present", "past", "future"])),
            "neg": bool(rng.random() < 0.1),
        }
        if (c, "loc") in topic_of or rng.random() < 0.6:
            cl["loc"] = {"noun": pick(c, "loc"), "det": ["the", None][int(rng.integers(2))]}
            cl["loc_case"] = str(rng.choice(["in", "on", "with", "for", "of"]))
        if rng.random() < 0.5:
            cl["time"] = str(rng.choice(inv["time"]))
        clauses.append(cl)
    conj = str(rng.choice(["and", "but", "because"]))
    return clauses, conj


def generate(lang: str, n: int, split: str, seed: int = SEED, lexicons=None) -> list[dict]:
    """Generate ``n`` labelled examples of one language and split.

    Labels are balanced in expectation (drawn uniformly); ``LABEL_NOISE`` of them are then
    replaced by a random label, the same rate in every language and split.

    Returns:
      A list of ``{"text", "label", "language"}`` dicts.
    """
    lexicons = lexicons or build_lexicons(seed)
    split_id = {"train": 0, "validation": 1, "test": 2, "unlabeled": 3}[split]
    rng = _rng(seed, 2, LANGUAGES.index(lang), split_id)
    renderer = _Renderer(lang, lexicons[lang])
    rows = []
    for _ in range(n):
        label = str(rng.choice(LABELS))
        clauses, conj = _abstract_sentence(rng, label)
        text = renderer.sentence(clauses, conj)
        if rng.random() < LABEL_NOISE:
            label = str(rng.choice(LABELS))
        rows.append({"text": text, "label": label, "language": lang})
    return rows


def unlabeled_corpus(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[str]]:
    """Extra unlabeled sentences per language (for masked-LM pretraining; not shipped)."""
    lexicons = build_lexicons(seed)
    return {
        lang: [r["text"] for r in generate(lang, n, "unlabeled", seed, lexicons)]
        for lang, n in sizes.items()
    }


def write_splits(out: Path, seed: int = SEED) -> dict[str, dict[str, int]]:
    """Write ``out/{train,validation,test}/<lang>.jsonl``; return the sizes written."""
    lexicons = build_lexicons(seed)
    sizes = {
        "train": TRAIN_SIZES,
        "validation": dict.fromkeys(LANGUAGES, VALIDATION_SIZE),
        "test": dict.fromkeys(LANGUAGES, TEST_SIZE),
    }
    for split, per_lang in sizes.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for lang in LANGUAGES:
            rows = generate(lang, per_lang[lang], split, seed, lexicons)
            lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
            (out / split / f"{lang}.jsonl").write_text("".join(lines), encoding="utf-8")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "demo/data")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    sizes = write_splits(args.out, args.seed)
    for split, per_lang in sizes.items():
        print(f"{split:>10}: " + ", ".join(f"{k}={v}" for k, v in per_lang.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
