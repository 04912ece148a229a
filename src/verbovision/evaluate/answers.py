"""Free-text answers against references: exact match, the last number, the multiple-choice letter."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .inputs import as_list


def normalize_exact(text: str) -> str:
    """Exact-match normalisation: strip, lowercase, collapse whitespace, drop one final period."""
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    predicted = normalize_exact(prediction)
    return float(any(predicted == normalize_exact(r) for r in as_list(references)))


# A number not glued to a preceding word or digit: optional minus (ASCII or U+2212), then thousands-grouped,
# plain or decimal digits, then an optional "/denominator".
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:/(\d+(?:\.\d+)?))?")
_NUMERIC_REL_TOL = 1e-6


def extract_number(text: str) -> float | None:
    """The last number in free text: "so angle C is 70°" -> 70.0, "-1,000.5" -> -1000.5, "3/4" -> 0.75."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    sign, number, denominator = matches[-1].groups()
    value = float(number.replace(",", ""))
    if denominator is not None:
        if float(denominator) == 0:
            return None
        value /= float(denominator)
    return -value if sign else value


def numeric_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the last number of the prediction equals that of any reference within 1e-6 relative tolerance."""
    predicted = extract_number(prediction)
    if predicted is None:
        return 0.0
    values = [v for v in map(extract_number, as_list(references)) if v is not None]
    return float(any(math.isclose(predicted, v, rel_tol=_NUMERIC_REL_TOL) for v in values))


# G-LLaVA's cascade (scripts/geo_acc_calculate.py), first hit wins; the "Answer:" and "the answer is" patterns
# are relaxed as in the project's convention (optional space, optional "option", optional parentheses).
_CHOICE_PATTERNS = (
    re.compile(r"Answer:\s*([A-D])\b"),
    re.compile(r"[Tt]he correct answer is (?:option )?([A-D])\b"),
    re.compile(r"option ([A-D]) is selected"),
    re.compile(r"[Tt]he answer is (?:option )?\(?([A-D])\b"),
)
_CHOICE_LAST_SENTENCE = re.compile(r"is ([A-D])\b")
_CHOICE_ALONE = re.compile(r"\W*\(?([A-D])\)?\W*")


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter A-D of a free-text answer, or None."""
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    sentences = text.split(".")
    if len(sentences) >= 2:  # G-LLaVA looks at the last complete sentence
        match = _CHOICE_LAST_SENTENCE.search(sentences[-2].strip())
        if match:
            return match.group(1)
    match = _CHOICE_ALONE.fullmatch(text.strip())
    return match.group(1) if match else None


def choice_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the extracted letter equals the reference letter (references are letters, e.g. "C")."""
    letter = extract_choice(prediction)
    return float(letter is not None and any(letter == r.strip().upper() for r in as_list(references)))
