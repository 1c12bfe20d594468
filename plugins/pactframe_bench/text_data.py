"""Eight text classification tasks built from packaged data (offline).

Sources (all from package registries, nothing from a model or data hub):

- Debian ``wordnet-base``: noun / verb glosses labelled with their WordNet
  lexicographer file (supersense); ``noun.Tops`` is dropped (a catch-all).
- Debian ``fortunes`` + ``fortunes-min``: English quotations labelled with
  their category file; ``fortunes-de/-es/-it/-pl/-br/-cs/-ru`` with them give
  a language-identification task.
- Debian ``r-cran-janeaustenr``: two-line passages labelled with their novel;
  ``r-cran-tidytext``: the Bing sentiment lexicon (word -> polarity);
  ``r-cran-dslabs``: ``trump_tweets`` (tweet -> posting client). The R data
  are lazy-load databases read with PyPI ``rdata`` (no R needed).
- PyPI ``chatterbot-corpus``: English dialogue lines labelled with topic.

Every task has class-balanced, de-duplicated train / validation / test splits
(at most ``train`` / ``validation`` / ``test`` examples, split per class in
those proportions when a class is small). Texts are sorted before a seeded
shuffle, so the same packages give byte-identical files.
"""

from __future__ import annotations

import gzip
import math
import random
import re
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from pactframe.errors import InputError
from pactframe_bench.cache import read_json, recipe_dir, sha256_file, write_json
from pactframe_bench.debian import unpacked_package

DATA_VERSION = 2

WORDNET_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
"""WordNet 3.0 lexicographer files by number (lexnames(5WN))."""

FORTUNE_TOPICS = {
    "computers": "computers",
    "definitions": "humorous definitions of words",
    "people": "famous people",
    "politics": "politics",
    "science": "science",
    "work": "work and jobs",
    "men-women": "men and women",
    "songs-poems": "songs and poems",
}
LANGUAGES = {
    "fortunes": "English",
    "fortunes-de": "German",
    "fortunes-es": "Spanish",
    "fortunes-it": "Italian",
    "fortunes-pl": "Polish",
    "fortunes-br": "Portuguese",
    "fortunes-cs": "Czech",
    "fortunes-ru": "Russian",
}
AUSTEN_NOVELS = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
TWEET_SOURCES = {
    "Twitter for Android": "a tweet posted from an Android phone",
    "Twitter for iPhone": "a tweet posted from an iPhone",
    "Twitter Web Client": "a tweet posted from a web browser on a computer",
}


@attrs.frozen
class TextTask:
    """One task: class names, a prompt per class (for the zero-shot head), splits.

    ``splits`` maps ``"train" / "validation" / "test"`` to ``(texts, labels)``.
    """

    name: str
    classes: tuple[str, ...]
    prompts: tuple[str, ...]
    splits: dict[str, tuple[list[str], list[int]]]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- raw sources
def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _wordnet(root: Path, pos: str) -> dict[str, list[str]]:
    folder = unpacked_package("wordnet-base", root) / "usr/share/wordnet"
    by_class: dict[str, list[str]] = {}
    for line in (folder / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue
        fields, gloss = line.split("|", 1)
        lexname = WORDNET_LEXNAMES[int(fields.split()[1])]
        if lexname == "noun.Tops":
            continue
        by_class.setdefault(lexname.split(".", 1)[1], []).append(_clean(gloss))
    return by_class


def _fortune_files(package_dir: Path) -> list[Path]:
    """Fortune text files of a package: those with a ``.dat`` index (which some
    packages keep in another folder); Slovak files of fortunes-cs are left out."""
    games = package_dir / "usr/share/games"
    indexed = {p.stem for p in games.rglob("*.dat")}
    return [
        p
        for p in sorted(games.rglob("*"))
        if p.is_file()
        and p.suffix not in (".dat", ".u8")
        and p.name in indexed
        and "/sk/" not in str(p)
        and "-sk" not in p.name
    ]


def _read_fortunes(path: Path) -> list[str]:
    utf8 = path.with_name(path.name + ".u8")
    raw = (utf8 if utf8.is_file() else path).read_bytes().decode("utf-8", errors="replace")
    quotes = [_clean(q) for q in re.split(r"\n%\n", raw)]
    return [q[:500] for q in quotes if len(q) >= 20]


def _fortune_topics(root: Path) -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = {}
    for package in ("fortunes", "fortunes-min"):
        for path in _fortune_files(unpacked_package(package, root)):
            if path.name in FORTUNE_TOPICS and path.parent.name == "fortunes":
                by_class.setdefault(path.name, []).extend(_read_fortunes(path))
    return by_class


def _languages(root: Path) -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = {}
    for package in LANGUAGES:
        packages = (package, "fortunes-min") if package == "fortunes" else (package,)
        for name in packages:
            for path in _fortune_files(unpacked_package(name, root)):
                by_class.setdefault(package, []).extend(_read_fortunes(path))
    return by_class


def _r_lazy_load(package_dir: Path, variable: str) -> Any:
    """One object of an R package's lazy-load data base (``data/Rdata.rdx/.rdb``)."""
    from rdata import conversion, parser

    folder = next(package_dir.glob("usr/lib/R/site-library/*/data"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = conversion.convert(
            parser.parse_data(gzip.decompress((folder / "Rdata.rdx").read_bytes()))
        )
        offset, length = (int(v) for v in index["variables"][variable])
        with open(folder / "Rdata.rdb", "rb") as handle:
            handle.seek(offset)
            blob = handle.read(length)
        return conversion.convert(parser.parse_data(zlib.decompress(blob[4:])))


def _austen(root: Path) -> dict[str, list[str]]:
    package = unpacked_package("r-cran-janeaustenr", root)
    by_class = {}
    for variable in AUSTEN_NOVELS:
        lines = [_clean(str(x)) for x in _r_lazy_load(package, variable)]
        lines = [x for x in lines if x and not x.isupper() and not x.startswith("CHAPTER")]
        by_class[variable] = [f"{a} {b}" for a, b in zip(lines[0::2], lines[1::2])]
    return by_class


def _word_sentiment(root: Path) -> dict[str, list[str]]:
    frame = _r_lazy_load(unpacked_package("r-cran-tidytext", root), "sentiments")
    by_class: dict[str, list[str]] = {}
    for word, label in zip(frame["word"], frame["sentiment"]):
        by_class.setdefault(str(label), []).append(str(word))
    return by_class


def _tweets(root: Path) -> dict[str, list[str]]:
    frame = _r_lazy_load(unpacked_package("r-cran-dslabs", root), "trump_tweets")
    by_class: dict[str, list[str]] = {}
    for source, text, retweet in zip(frame["source"], frame["text"], frame["is_retweet"]):
        if str(source) not in TWEET_SOURCES or bool(retweet):
            continue
        text = _clean(re.sub(r"https?://\S+", "", str(text)))
        if len(text) >= 20:
            by_class.setdefault(str(source), []).append(text)
    return by_class


def _chat_topics(root: Path, num_topics: int = 9) -> dict[str, list[str]]:
    import chatterbot_corpus
    import yaml

    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    by_class: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.yml")):
        if path.stem in ("botprofile", "conversations"):
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        lines = {
            _clean(str(x)) for conv in data.get("conversations", []) for x in conv if str(x).strip()
        }
        by_class[path.stem] = {x for x in lines if len(x) >= 3}
    counts: dict[str, int] = {}
    for lines in by_class.values():
        for line in lines:
            counts[line] = counts.get(line, 0) + 1
    unique = {k: sorted(x for x in v if counts[x] == 1) for k, v in by_class.items()}
    keep = sorted(unique, key=lambda k: (-len(unique[k]), k))[:num_topics]
    return {k: unique[k] for k in sorted(keep)}


def _builders() -> dict[str, tuple[Callable[[Path], dict[str, list[str]]], Callable[[str], str]]]:
    """task name -> (raw builder, class name -> prompt)."""
    return {
        "wn_noun": (
            lambda r: _wordnet(r, "noun"),
            lambda c: f"a dictionary definition of a noun about {c}",
        ),
        "wn_verb": (
            lambda r: _wordnet(r, "verb"),
            lambda c: f"a dictionary definition of a verb about {c}",
        ),
        "fortune_topic": (_fortune_topics, lambda c: f"a quotation about {FORTUNE_TOPICS[c]}"),
        "langid": (_languages, lambda c: f"a text written in {LANGUAGES[c]}"),
        "austen": (
            _austen,
            lambda c: f"a passage from the novel {AUSTEN_NOVELS[c]} by Jane Austen",
        ),
        "word_sent": (_word_sentiment, lambda c: f"a {c} word"),
        "tweet_src": (_tweets, lambda c: TWEET_SOURCES[c]),
        "chat_topic": (_chat_topics, lambda c: f"a line of conversation about {c}"),
    }


TASK_NAMES: tuple[str, ...] = tuple(_builders())


# --------------------------------------------------------------------------- splitting
def split_balanced(
    by_class: dict[str, list[str]], sizes: dict[str, int], seed: int
) -> tuple[tuple[str, ...], dict[str, tuple[list[str], list[int]]]]:
    """Class-balanced train/validation/test splits of de-duplicated texts.

    A text that occurs under two classes is dropped (its label is ambiguous).
    Each class gives at most ``ceil(size / C)`` examples to each split; a class
    with fewer examples than that is split in the proportions of ``sizes``.
    """
    owners: dict[str, set[str]] = {}
    for label, texts in by_class.items():
        for text in texts:
            owners.setdefault(text, set()).add(label)
    classes = tuple(sorted(by_class))
    rng = random.Random(seed)
    order = ("test", "validation", "train")
    total = sum(sizes[s] for s in order)
    out: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in order}
    for index, label in enumerate(classes):
        texts = sorted({t for t in by_class[label] if len(owners[t]) == 1})
        rng.shuffle(texts)
        quota = {s: math.ceil(sizes[s] / len(classes)) for s in order}
        if len(texts) < sum(quota.values()):
            quota = {s: int(len(texts) * sizes[s] / total) for s in order}
        start = 0
        for split in order:
            part = texts[start : start + quota[split]]
            start += quota[split]
            out[split][0].extend(part)
            out[split][1].extend([index] * len(part))
    for split in order:
        pairs = list(zip(*out[split]))
        rng.shuffle(pairs)
        out[split] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return classes, out


def build_text_tasks(
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    root: Path | None = None,
    tasks: tuple[str, ...] = TASK_NAMES,
) -> list[TextTask]:
    """Build (or load from the cache) the text tasks; returns them in ``tasks`` order."""
    sizes = sizes or {"train": 1200, "validation": 200, "test": 500}
    recipe = {"data_version": DATA_VERSION, "sizes": sizes, "seed": seed}
    folder = recipe_dir("text-data", recipe, root)
    builders = _builders()
    out = []
    for name in tasks:
        if name not in builders:
            raise InputError(f"Unknown text task {name!r}; the text suite has {list(builders)}.")
        path = folder / f"{name}.json"
        if not path.exists():
            raw, prompt = builders[name]
            classes, splits = split_balanced(raw(folder.parent), sizes, seed)
            write_json(
                path,
                {
                    "classes": list(classes),
                    "prompts": [prompt(c) for c in classes],
                    "splits": {k: [v[0], v[1]] for k, v in splits.items()},
                },
            )
        data = read_json(path)
        out.append(
            TextTask(
                name,
                tuple(data["classes"]),
                tuple(data["prompts"]),
                {k: (v[0], v[1]) for k, v in data["splits"].items()},
            )
        )
    manifest = {
        p.name: sha256_file(p) for p in sorted(folder.glob("*.json")) if p.name != "manifest.json"
    }
    write_json(folder / "manifest.json", manifest)
    return out
