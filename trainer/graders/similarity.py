"""Text similarity metrics for the `text_similarity` grader, each returning a value in [0, 1].

Libraries do the measuring: rapidfuzz (fuzzy_match = normalized Levenshtein ratio), nltk (BLEU with
smoothing method 1, GLEU, METEOR) and Google's rouge-score (ROUGE-N F-measure, ROUGE-L F-measure).
`f1` is the SQuAD token-overlap F1 (lower case, punctuation and articles removed).

METEOR and WordNet: nltk's METEOR matches exact words, then Porter stems, then WordNet synonyms.
WordNet is a data download that rftweb never performs at run time, so when the WordNet corpus is not
installed for nltk the synonym stage matches nothing (exact and stem stages only; scores can be lower
than with synonyms). When an administrator installs the corpus (`nltk.download("wordnet")`), it is used.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

METRICS = (
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
    "f1",
)
# Scored through an embeddings endpoint (see types.EmbeddingsClient), not computed locally.
EMBEDDING_METRICS = ("cosine",)
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def fuzzy_match(candidate: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(candidate, reference) / 100.0


def bleu(candidate: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis, references = tokenize(candidate), [tokenize(reference)]
    if not hypothesis or not references[0]:
        return 0.0
    return float(sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1))


def gleu(candidate: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    hypothesis, references = tokenize(candidate), [tokenize(reference)]
    if not hypothesis or not references[0]:
        return 0.0
    return float(sentence_gleu(references, hypothesis))


class _NoSynonyms:
    """A lexicon without synonyms, used for METEOR's synonym stage when WordNet is not installed."""

    def synsets(self, word: str, *args: Any, **kwargs: Any) -> list[Any]:
        return []


@cache
def _wordnet() -> Any:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return _NoSynonyms()
    from nltk.corpus import wordnet

    return wordnet


def wordnet_available() -> bool:
    return not isinstance(_wordnet(), _NoSynonyms)


def meteor(candidate: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    hypothesis, references = tokenize(candidate), [tokenize(reference)]
    if not hypothesis or not references[0]:
        return 0.0
    return float(meteor_score(references, hypothesis, wordnet=_wordnet()))


@cache
def _rouge_scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def rouge(candidate: str, reference: str, *, kind: str) -> float:
    return float(_rouge_scorer(kind).score(reference, candidate)[kind].fmeasure)


def _squad_tokens(text: str) -> list[str]:
    text = text.lower()
    text = "".join(character for character in text if character not in string.punctuation)
    return _ARTICLES.sub(" ", text).split()


def token_f1(candidate: str, reference: str) -> float:
    predicted, gold = _squad_tokens(candidate), _squad_tokens(reference)
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _metric(name: str) -> Callable[[str, str], float]:
    if name.startswith("rouge_"):
        kind = "rougeL" if name == "rouge_l" else f"rouge{name.removeprefix('rouge_')}"
        return lambda candidate, reference: rouge(candidate, reference, kind=kind)
    return {"fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor, "f1": token_f1}[name]


def similarity(metric: str, *, candidate: str, reference: str) -> float:
    """`metric` (one of METRICS) of `candidate` against `reference`; two empty texts are identical."""
    if not candidate.strip() and not reference.strip():
        return 1.0
    return max(0.0, min(1.0, _metric(metric)(candidate, reference)))
