"""Captioning and VQA metrics, numerically identical to the official toolkits, in pure Python + numpy.

Entry points: ``score_captions`` (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, optionally SPICE, named as pycocoevalcap
names them), ``score_vqa`` (VQAv2 accuracy, TextVQA accuracy, exact match, numeric answers, multiple-choice
letters), ``wer`` / ``cer`` and ``bootstrap_ci``. ``CiderD`` also serves as a reusable SCST reward with fixed
document frequencies.

Parity guarantees (checked by tests/test_metrics.py and benchmarks/metrics_bench.py)
-----------------------------------------------------------------------------------
* ``ptb_tokenize`` reproduces pycocoevalcap's ``PTBTokenizer``: Stanford CoreNLP 3.4.1 ``PTBTokenizer
  -preserveLines -lowerCase`` followed by the removal of pycocoevalcap's PUNCTUATIONS tokens. The lexer rules
  below re-implement the 3.4.1 JFlex grammar (longest match, the earlier rule wins ties, trailing context
  counts in the match length); its word lists were probed entry by entry against the jar. The Java lexer reads
  all captions as one file, so a caption's tokens can depend on the next caption ("... letter A." then "A dog"
  gives "a", "."; then "the dog" gives "a.") and the last caption sees the end of the file; ``ptb_tokenize``
  lexes the same joined text and reproduces both effects. Brackets come out as "-lrb-" etc., as in
  pycocoevalcap (its punctuation list has them in upper case only).
* BLEU-1..4, ROUGE-L and CIDEr-D return the same floats, bit for bit, as pycocoevalcap 1.2's ``Bleu(4)``,
  ``Rouge`` and ``Cider``: every order-dependent floating-point sum runs in pycocoevalcap's order (n-grams in
  first-occurrence order, the same ``np.mean`` calls), and every transcendental function is the same scalar
  call (Python's ``**`` and ``math.exp``, ``np.log`` on scalars, libm's ``pow(x, 2)``, which is not always
  ``x * x``) -- never a vectorised numpy ufunc, whose SIMD kernels may round differently.
* METEOR and SPICE are pycocoevalcap's own Java scorers; when they cannot run, ``CaptionScores.skipped`` says
  why, never a silent zero. SPICE is off by default (it downloads Stanford CoreNLP on first use).
* VQAv2 accuracy (``score_vqa`` kind "vqa") gives the floats of the official vqaEval.py (GT-Vision-Lab/VQA, its
  2021 version) per question, overall, per answer type and per question type, and its percentages rounded to 2
  decimals: normalisation only when the human answers disagree, its regexes and tables with their bugs, sums left
  to right in its order. vqaEval.py is Python 2 code and its Python 2 semantics are kept where Python 3 differs:
  "\\d" matches 0-9 only, lowercasing is one character to one, round() goes half away from zero, sum() does not
  compensate (3.12's does). TextVQA accuracy (kind "textvqa") is m4c's TextVQAAccuracyEvaluator (MMF; LLaVA's
  eval_textvqa runs it), whose answer processing follows TextVQA's EvalAI server: it always normalises, lowercasing
  first.

Known differences from the official toolkits
--------------------------------------------
* Line breaks inside a caption ("\\r", U+2028, U+2029, VT, FF): pycocoevalcap only replaces "\\n", so Java
  sees extra lines and pairs every later caption of the call with the wrong tokens. Here they are spaces.
* Letters are Unicode category L* (plus the marks the grammar lists); Java 17's and Python's Unicode tables
  may disagree on recently added characters. Characters outside the Basic Multilingual Plane (emoji) are
  deleted, as Java deletes their surrogate halves.
* Constructs rarer than anything probed (SGML with unbalanced quotes, odd URLs) may tokenize differently from
  the jar; the tests compare both on the real captions at hand and a few hundred tricky strings.
* CIDEr-D's document frequencies come from the references of the evaluated set, as in pycocoevalcap, so
  ``bootstrap_ci`` over per-image CIDEr resamples scores computed with the full set's df held fixed.
* VQAv2 accuracy: characters whose Unicode properties changed after Python 2.7's Unicode 5.2 (U+180E was
  whitespace then) are read with Python 3's tables.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# PTB tokenization (Stanford CoreNLP 3.4.1 PTBLexer, options -preserveLines -lowerCase, ptb3Escaping defaults)
# ---------------------------------------------------------------------------------------------------------------

#: Tokens pycocoevalcap drops after tokenizing (pycocoevalcap/tokenizer/ptbtokenizer.py). Brackets come out of
#: Java lowercased ("-lrb-"), so the upper-case bracket entries never match and brackets survive as tokens.
PTB_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                              "-", "--", "...", ";"])

# Character classes of the grammar. JFlex's [:letter:] is Unicode L*; Python's [^\W\d_] adds numeric
# characters such as "½" and "²", which the grammar lexes differently, so they are removed.
_NOT_ALNUM = r"\W_\u00B2\u00B3\u00B9\u00BC-\u00BE\u2070-\u209F\u2150-\u218F\u2460-\u24FF\u2776-\u2793"
_L = rf"[^\d{_NOT_ALNUM}]"  # letter
_LD = rf"[^{_NOT_ALNUM}]"  # letter or decimal digit
# Marks and symbols the grammar's WORD accepts besides letters (copied from the PTBLexer grammar's WORD macro).
_WORD_EXTRA = (r"\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384"
               r"\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F"
               r"\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E"
               r"\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5"
               r"\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4"
               r"\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83"
               r"\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56"
               r"\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD")
_WCHAR = rf"(?:{_L}|[{_WORD_EXTRA}]|&[aeiouAEIOU](?i:acute|grave|uml);)"
_WLD = rf"(?:{_WCHAR}|\d)"
_WORD = rf"{_WCHAR}{_WLD}*(?:[.!?]{_WCHAR}{_WLD}*)*"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_NEWLINE = r"(?:\r\n?|[\n\u2028\u2029\u000B\u000C\u0085])"
_SPACENL = rf"(?:{_SPACE}|{_NEWLINE})"
_APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
_APOSETC = r"(?:['`\u0091\u0092\u2018\u2019\u201B]|(?i:&apos;))"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_NUM = r"\d*(?:[.:,\u00AD\u066B\u066C]\d+)+|\d+"
_ACRO_SPECIAL = r"(?i:(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))"
_ACRO = rf"(?:{_ACRO_SPECIAL}|[A-Za-z](?:\.[A-Za-z])*)"
_ACRO2 = rf"(?:{_ACRO_SPECIAL}|[A-Za-z](?:\.[A-Za-z])+)"
_SGML_NAME = r"[A-Za-z][A-Za-z0-9_:.-]*"
_SGML = (rf"<(?:[!?][A-Za-z-][^>\r\n]*|{_SGML_NAME}(?: +(?:{_SGML_NAME} *= *(?:'[^'\r\n]*'|\"[^\"\r\n]*\"|{_SGML_NAME})"
         rf"|{_SGML_NAME}))* */?|/{_SGML_NAME}) *>")
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SREDAUX = rf"(?i:n){_APOSETC}(?i:t)"


def _words(alternatives: str) -> str:
    """A caseless alternation, longest alternative first: JFlex takes the longest match, Python the first.

    "[X]" marks a case-sensitive letter, as in the grammar (JFlex's %caseless does not reach inside classes).
    """
    alts = sorted(alternatives.split("|"), key=len, reverse=True)
    return "(?i:" + "|".join(re.sub(r"\[(\w)\]", r"(?-i:\1)", re.escape(a).replace(r"\[", "[").replace(r"\]", "]"))
                             for a in alts) + ")"


# Abbreviation lists of the 3.4.1 grammar, each entry confirmed against the jar.
# ABBREV1: usually followed by a lower-case word; before a capital the period also ends the sentence.
_ABBREV1_WORDS = (
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
    "|Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kan|Kans|Ky|[L]a|[M]ass|Md|Mich|Minn"
    "|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wis|Wisc|Wyo"
    "|Inc|Co|Cos|Corp|Pt[y]|Pt[y]s|Pt[e]|Pt[e]s|Ppt[y]|Ppt[y]s|Ppt[e]|Ppt[e]s|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ"
    "|Intl|Sys|tel|est|ext|sq|Jr|Sr|Bros|Ed.D|Ph.D|Blvd|Rd|Esq|etc|al|seq|Bldg")
# ABBREV4: titles and the like; "Mr." is one token whatever follows.
_ABBREV4_WORDS = (
    "Mr|Mrs|Ms|[M]iss|Dr|Drs|Prof|Profs|Sen|Sens|Rep|Reps|Atty|Attys|Lt|Col|Gen|Messrs|Gov|Govs|Adm|Rev|Maj"
    "|Sgt|Cpl|Pvt|Capt|St|Ste|Ave|Pres|Lieut|Rt|Hon|Brig|Cmdr|Comdr|Pfc|Spc|Supt|Supts|Det|Mt|Ft|Adj|Adv|Asst"
    "|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc|vs|Alex|Wm|Jos|Cie|a.k.a|cf|TREAS|Ph|Invt|Elec|Natl|M[f]g|M[t]g|Dept")
# ABBREV3: abbreviations only before a number ("fig. 3").
_ABBREV3_WORDS = "ca|fig|figs|prop|no|nos|art|bldg|pp|op"
# After "U.S." (or "I.") these capitalised words mean the period also ends a sentence (initial case-sensitive).
_SENTENCE_STARTERS = "|".join(w[0] + f"(?i:{re.escape(w[1:])})" for w in sorted(
    ("About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More "
     "Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This We When "
     "While What Yet You").split(), key=len, reverse=True))
_FILE_EXTENSIONS = _words("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3"
                          "|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
_ABBREV1, _ABBREV4, _ABBREV3 = _words(_ABBREV1_WORDS), _words(_ABBREV4_WORDS), _words(_ABBREV3_WORDS)

_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}
_LATEX_QUOTES = str.maketrans({"\u0091": "`", "\u2018": "`", "\u201B": "`", "\u2039": "`", "\u0092": "'",
                               "\u2019": "'", "\u203A": "'", "\u0093": "``", "\u201C": "``", "\u00AB": "``",
                               "\u0094": "''", "\u201D": "''", "\u00BB": "''"})

# An action turns the main part of a match into (tokens, number of characters consumed); consuming fewer
# characters than matched is JFlex's yypushback.
_Action = Callable[[str], "tuple[list[str], int]"]


def _keep(text: str) -> tuple[list[str], int]:
    return [text], len(text)


def _skip(text: str) -> tuple[list[str], int]:
    return [], len(text)


def _emit(value: str) -> _Action:
    return lambda text: ([value], len(text))


def _pushback(n: int) -> _Action:
    return lambda text: ([text[:-n]], len(text) - n)


def _sentence_final_abbrev(text: str) -> tuple[list[str], int]:
    """'etc.' ending a sentence: the token keeps its period and the period is lexed again as a token."""
    return [text], len(text) - 1


def _sentence_final_acronym(text: str) -> tuple[list[str], int]:
    """'U.S.' before 'The': as above, except that a one-letter 'I.' loses its period to the next token."""
    return ([text[0]], 1) if len(text) == 2 else ([text], len(text) - 1)


def _soft_hyphens(text: str) -> tuple[list[str], int]:
    return [text.replace("\u00AD", "") or "-"], len(text)


def _amp(text: str) -> tuple[list[str], int]:
    return [re.sub("(?i)&amp;", "&", text)], len(text)


def _nbsp(text: str) -> str:
    """Tokens that may contain spaces (fractions, phone numbers, SGML) get non-breaking spaces instead."""
    return text.replace(" ", "\u00A0")


def _ptb_parens(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


def _spaced(text: str) -> tuple[list[str], int]:
    return [_nbsp(text)], len(text)


def _smiley(text: str) -> tuple[list[str], int]:
    return [_ptb_parens(text)], len(text)


def _phone(text: str) -> tuple[list[str], int]:
    return [_ptb_parens(_nbsp(text))], len(text)


def _quotes(probably_left: bool) -> _Action:
    """LaTeX-style quotes, as PTBLexer.latexQuotes: ASCII quotes by guessed side, Unicode ones by their shape."""
    single, double = ("`", "``") if probably_left else ("'", "''")

    def action(text: str) -> tuple[list[str], int]:
        out = re.sub("&apos;|'", single, text)
        out = re.sub('"|&quot;', double, out)
        return [out.translate(_LATEX_QUOTES)], len(text)
    return action


def _hyphens(text: str) -> tuple[list[str], int]:
    return ["--" if 3 <= len(text) <= 4 else text], len(text)


def _replace_chars(table: Mapping[str, str]) -> _Action:
    return lambda text: (["".join(table.get(c, c) for c in text)], len(text))


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern
    action: _Action
    first: re.Pattern
    """Matches every character a match of the rule can start with (a superset): rules are only tried there."""
    has_context: bool


def _rule(main: str, action: _Action, first: str, context: str | None = None) -> _Rule:
    """One grammar rule `main` or `main/context`; the context counts for the longest match but is not consumed."""
    pattern = f"(?:{main})" + (f"(?=(?P<ctx>{context}))" if context is not None else "")
    return _Rule(re.compile(pattern), action, re.compile(first), context is not None)


def _alternatives(mains: Sequence[str], action: _Action, first: str, context: str | None = None) -> list[_Rule]:
    """A rule whose alternatives must compete on length (Python's "|" would stop at the first that matches)."""
    return [_rule(main, action, first, context) for main in mains]


# Symbols that are tokens on their own.
_MISC_SYMBOL = (r"[+%&~^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387"
                r"\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D"
                r"\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038"
                r"\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012"
                r"\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")

_CURRENCY_SIGN = r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
_SENTENCE_PUNCT = r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"

# First characters of the rules (supersets).
_F_APOS = "['\u0092\u2019&]"
_F_WCHAR = rf"{_L}|[{_WORD_EXTRA}&]"
_F_WLD = rf"{_F_WCHAR}|\d"
_F_AZ = "[A-Za-z]"
_F_AZ09 = "[A-Za-z0-9]"


# The rules in the grammar's order (which breaks ties between matches of equal length).
_RULES = (
    _rule(r"(?i:c\+\+|[cf]#)", _keep, "[cCfF]"),  # programming languages
    _rule(_words("cannot|'twas"), _pushback(3), "[cC']"),  # "can" "not", "'t" "was"
    _rule(_words("'tis|gonna|gotta|lemme|gimme|wanna"), _pushback(2), "['gGlLwW]"),  # "gon" "na" ...
    _rule(_SGML, _spaced, "<"),
    _rule(r"&(?i:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", _emit("--"),
          "[&\u0096\u0097\u2013\u2014\u2015]"),  # dashes
    _rule(r"(?i:&amp;)", _emit("&"), "&"),
    _rule(r"&(?i:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", _keep, "&"),
    _rule(_WORD, _soft_hyphens, _F_WCHAR, context=_REDAUX),  # "he" before "'s"
    _rule(r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*", _soft_hyphens, "[A-Za-z\u00AD]", context=_SREDAUX),  # "do" n't
    _rule(_WORD, _soft_hyphens, _F_WCHAR),
    *_alternatives((  # APOWORD: words with an inner or final apostrophe that stay whole
        rf"{_APOS}(?i:n){_APOS}?", rf"[lLdDjJ]{_APOS}", rf"(?i:Dunkin|somethin|ol){_APOS}", rf"{_APOS}(?i:em)",
        rf"[A-HJ-XZn]{_APOSETC}{_L}{{2}}{_L}*", rf"{_APOS}[2-9]0(?i:s)", rf"{_APOS}(?i:till?)",
        rf"{_L}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_L}*", rf"{_APOS}(?i:cause)", rf"(?i:o){_APOSETC}(?i:o)",
        r"(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"), _keep, rf"{_F_APOS}|[A-Za-z]|{_L}"),
    _rule(rf"(?i:y){_APOS}", _keep, "[yY]", context=_L),  # "y'" all
    _rule(r"(?i:https?)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]", _keep, "[hH]"),  # URL
    _rule(r"(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}"  # likely URL
          r"|(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu))"
          r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?", _keep, r"[wW]|[^ \t\n\f\r\"`'<>|.!?(){},-_$]"),
    _rule(r"(?:<|(?i:&lt;))?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
          r"[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:>|(?i:&gt;))?", _keep, "[<&A-Za-z0-9]"),  # e-mail
    _rule(rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_WCHAR}+", _keep, "[@#]"),  # Twitter name or hashtag
    _rule(_REDAUX, _quotes(False), _F_APOS, context="[^A-Za-z]"),  # 's 'm 'd 're 've 'll
    _rule(_SREDAUX, _quotes(False), "[nN]"),  # n't
    _rule(r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", _keep, r"\d"),  # date
    _rule(rf"[-+]?(?:{_NUM})", _soft_hyphens, r"[-+.:,\u00AD\u066B\u066C]|\d"),  # number
    _rule(r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)", _keep,
          "[\u207A\u207B\u208A\u208B\u2070\u00B9\u00B2\u00B3\u2074-\u2079\u2080-\u2089]"),  # super/subscripts
    _rule(r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", _spaced, r"\d"),  # fraction
    _rule(r"[\u00BC\u00BD\u00BE\u2153-\u215E]", _replace_chars(_FRACTIONS), "[\u00BC\u00BD\u00BE\u2153-\u215E]"),
    _rule(rf"(?i:-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls)"
          rf"|(?i:Cap){_APOS}(?i:n)|(?i:c){_APOS}(?i:est)", _amp, "[-cCpPaAsS]"),  # Treebank special cases
    _rule(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", _keep, _F_AZ09),  # a/b
    _rule(r"[A-Z]*\$|#", _keep, "[A-Z$#]"),  # "US$"
    _rule(_CURRENCY_SIGN, _replace_chars(_CURRENCY), _CURRENCY_SIGN),
    _rule(rf"{_ACRO}\.", _sentence_final_acronym, _F_AZ,  # "U.S." before "The"
          context=rf"{_SPACENL}+(?:{_SENTENCE_STARTERS}|{_SGML}){_SPACENL}"),
    _rule(rf"{_ABBREV3}\.", _keep, _F_AZ, context=rf"{_SPACENL}?\d"),  # "fig." before a number
    _rule(rf"{_ABBREV1}\.", _sentence_final_abbrev, _F_AZ,  # "etc." before a capital
          context=rf"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})"),
    _rule(rf"{_ABBREV1}\.", _keep, _F_AZ, context=r"[\s\S]{2}"),
    _rule(rf"{_ABBREV1}\.", _sentence_final_abbrev, _F_AZ),  # at the end of the file
    *_alternatives((rf"{_ABBREV4}\.", rf"{_ACRO}\."), _keep, _F_AZ),  # "Mr.", "e.g."
    *_alternatives((_ABBREV4, _ACRO), _keep, _F_AZ, context=_SPACE),
    _rule(_ACRO, _keep, _F_AZ, context=_SPACENL),
    _rule(rf"{_APOS}[0-9][0-9]", _keep, _F_APOS, context=_SPACENL),  # "'90"
    _rule(rf"{_WLD}+(?:\.{_WLD}+)*\.{_FILE_EXTENSIONS}", _keep, _F_WLD, context=rf"{_SPACENL}|[.?!,]"),  # file.jpg
    _rule(rf"{_WORD}\.", _soft_hyphens, _F_WCHAR, context="[,;:\u3001]"),  # "dog." before a comma
    _rule(r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[- \u00A0])?[0-9]{2,4}[- \u00A0])"  # phone
          r"[0-9]{3,4}[- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}",
          _phone, "[(+0-9]"),
    _rule(r'"|(?i:&quot;)', _quotes(True), "[\"&]", context="[A-Za-z0-9$]"),
    _rule(r'"|(?i:&quot;)', _quotes(False), "[\"&]"),
    _rule(r"<|(?i:&lt;)", _emit("<"), "[<&]"),
    _rule(r">|(?i:&gt;)", _emit(">"), "[>&]"),
    _rule(r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]", _smiley, "[<>:;=]", context="[^A-Za-z0-9]"),
    _rule(r"[-^x=~<>']_[-^x=~<>']|\([-^x=~<>'][_.]?[-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)", _smiley, "[-^x=~<>'(]"),
    _rule(r"\{", _emit("-LCB-"), "\\{"),
    _rule(r"\}", _emit("-RCB-"), "\\}"),
    _rule(r"\[", _emit("-LSB-"), "\\["),
    _rule(r"\]", _emit("-RSB-"), "\\]"),
    _rule(r"\(", _emit("-LRB-"), "\\("),
    _rule(r"\)", _emit("-RRB-"), "\\)"),
    _rule(r"-+", _hyphens, "-"),
    _rule(r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", _emit("..."), "[.\u0085\u2026]"),
    _rule(r"@+|#+|_+", _keep, "[@#_]"),
    _rule(r"\*+|(?:\\\*){1,3}", _keep, "[*\\\\]"),
    _rule("[,;:\u3001]", _keep, "[,;:\u3001]"),
    _rule(r"[?!]+", _keep, "[?!]"),
    _rule(_SENTENCE_PUNCT, _keep, _SENTENCE_PUNCT),
    _rule("=", _keep, "="),
    _rule("/", _keep, "/"),
    _rule(rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{_ACRO2}\.|[A-Za-z0-9\u00AD]+))+\.", _soft_hyphens, _F_AZ09,
          context="[,;:\u3001]"),
    _rule(rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{_ACRO2}\.|[A-Za-z0-9\u00AD]+))+", _soft_hyphens,
          _F_AZ09),  # hyphenated words
    _rule(rf"(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+(?:{_HYPHEN}(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+)*\.", _keep, _LD,
          context="[,;:\u3001]"),
    _rule(rf"(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+(?:{_HYPHEN}(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+)*", _keep, _LD),
    _rule(r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+\.", _amp, "[A-Z]", context="[,;:\u3001]"),
    _rule(r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+", _amp, "[A-Z]"),
    _rule("'", _quotes(True), "'", context="[A-Za-z][^ \t\n\r\u00A0]"),  # an opening single quote
    _rule(_REDAUX, _quotes(False), _F_APOS),
    _rule(rf"''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]"
          rf"{{1,2}}|{_APOS}", _quotes(False), rf"[`\u2018-\u201F\u0091-\u0094\u2039\u203A\u00AB\u00BB]|{_F_APOS}"),
    _rule("<<|>>", _keep, "[<>]"),
    _rule(_MISC_SYMBOL, _keep, _MISC_SYMBOL),
    _rule(rf"\x00|{_SPACE}+|[\u200B\u200E\u200F\uFEFF]|(?i:&nbsp;)", _skip,
          rf"[\x00\u200B\u200E\u200F\uFEFF&]|{_SPACE}"),  # white space
    _rule(r"[\s\S]", _skip, r"[\s\S]"),  # untokenizable character: deleted (pycocoevalcap logs a warning)
)


@functools.cache
def _rules_starting_with(char: str) -> tuple[_Rule, ...]:
    return tuple(r for r in _RULES if r.first.match(char))


# Fast paths, equivalent to the rule search where they apply. No rule that starts at a letter can match across a
# space unless the word holds a "." or an "@", so a plain word (inner hyphens allowed) followed by a space or
# line end is a token -- and so are a following "," or ".", unless the grammar splits the word, the period
# belongs to the word (abbreviations, single letters: _PERIOD_WORDS is a superset of them) or starts a spaced
# ellipsis (". . ."). A clitic such as "'s" after the word is its own token: the only longer competitors, words
# with an inner apostrophe, at best tie and come later in the grammar (except "cont'd.").
_PLAIN_WORD = re.compile(r"([A-Za-z]+(?:-[A-Za-z]+)*)('(?:[sSmMdD]|[rR][eE]|[vV][eE]|[lL][lL]))?"
                         r"(?:(,)|(\.)(?! \.))?(?= |\n|\Z)")
_PLAIN_NUMBER = re.compile(r"[0-9]+(?= [^0-9]|\n|\Z)")  # a digit after the space could make a phone number
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_PERIOD_WORDS = frozenset(
    w.replace("[", "").replace("]", "").lower()
    for w in "|".join((_ABBREV1_WORDS, _ABBREV4_WORDS, _ABBREV3_WORDS)).split("|")) | frozenset(
    "abcdefghijklmnopqrstuvwxyz")
# A caption made of such words (no clitics), commas and one final period lexes as its words. The captions that
# are not of that kind hold a character outside it, a hyphen not inside a word, a period before the end, one of
# the split words, or a final period that may belong to its word. These regexes are literal or one character
# class, so they scan the text fast.
_ODD_CHAR = re.compile(r"[^A-Za-z ,.\n-]")
_HYPHEN_CHAR = re.compile("-")
_EARLY_PERIOD = re.compile(r"\.(?! *(?:\n|\Z))")
_FINAL_PERIOD = re.compile(r"\.(?= *(?:\n|\Z))")
_SPLIT_WORDS_BYTES = re.compile(b"cannot|gonna|gotta|lemme|gimme|wanna")
_SPACES = re.compile("  +")
# Java ends a line at these; pycocoevalcap only replaces "\n" in captions (see "Known differences").
_LINE_BREAKS = re.compile("\r|\u2028|\u2029|\u000B|\u000C")


def _lex_at(text: str, pos: int) -> tuple[list[str], int]:
    """Longest match of any rule at `pos` (trailing context included in the length); the first rule wins ties."""
    best_rule, best_main, best_total = None, "", -1
    for rule in _rules_starting_with(text[pos]):
        match = rule.regex.match(text, pos)
        if match is None:
            continue
        total = match.end() - pos + (len(match.group("ctx")) if rule.has_context else 0)
        if total > best_total:
            best_rule, best_main, best_total = rule, match.group(), total
    return best_rule.action(best_main)


def _lex_line(text: str, start: int, end: int) -> list[str]:
    """Raw PTB tokens of text[start:end] (one caption); lookahead may read on into the following captions."""
    tokens: list[str] = []
    pos = start
    while pos < end:
        if text[pos] == " ":
            pos += 1
            continue
        plain = _PLAIN_WORD.match(text, pos)
        if plain is not None and _is_plain(*plain.group(1, 2, 4)):
            tokens.extend(t for t in plain.groups() if t)
            pos = plain.end()
            continue
        plain = _PLAIN_NUMBER.match(text, pos)
        if plain is not None:
            tokens.append(plain.group())
            pos = plain.end()
            continue
        new_tokens, consumed = _lex_at(text, pos)
        tokens.extend(new_tokens)
        pos += consumed
    return tokens


def _is_plain(word: str, clitic: str | None, period: str | None) -> bool:
    lower = word.lower()
    if clitic:  # "cont'd." is a word of its own
        return lower not in _SPLIT_WORDS and lower != "cont"
    return lower not in _SPLIT_WORDS and not (period and lower in _PERIOD_WORDS)


def _java_lower(token: str) -> str:
    """Java's String.toLowerCase, which differs from str.lower() only in when a capital sigma is word-final."""
    if "\u03A3" not in token:
        return token.lower()
    return "".join(_java_lower_sigma(token, i) if c == "\u03A3" else c.lower() for i, c in enumerate(token))


# The JDK's word BreakIterator joins letters across these (its "$_mid_word_" characters).
_JAVA_MID_WORD = frozenset("-\u00AD\u2010\u2011\u2012\u2013\u2014\u2015\u2027\"'.")


def _java_lower_sigma(token: str, i: int) -> str:
    """Final sigma iff the JDK word around position i has a cased letter before i and none after it."""
    def joins(j: int) -> bool:  # is token[j] inside the word?
        if token[j].isalnum():
            return True
        return token[j] in _JAVA_MID_WORD and 0 < j < len(token) - 1 and token[j - 1].isalpha() \
            and token[j + 1].isalpha()
    start, end = i, i + 1
    while start > 0 and joins(start - 1):
        start -= 1
    while end < len(token) and joins(end):
        end += 1
    cased = [c.islower() or c.isupper() or c.istitle() for c in token[start:end]]
    final = any(cased[:i - start]) and not any(cased[i - start + 1:])
    return "\u03C2" if final else "\u03C3"


def _plain_results(text: str) -> list[str]:
    """Each line's result if it is a plain caption: its lowercased words, without commas and periods."""
    words = text.lower().replace(",", " ").replace(".", " ")
    words = _SPACES.sub(" ", words).replace(" \n", "\n").replace("\n ", "\n").strip(" ")
    return words.split("\n")


def _special_lines(text: str, line_starts: np.ndarray, plain: list[str]) -> list[int]:
    """The lines that are not plain captions, in order; `plain` holds each line's result if it were plain."""
    positions = [m.start() for m in _ODD_CHAR.finditer(text)]
    positions += [i for i in (m.start() for m in _HYPHEN_CHAR.finditer(text))
                  if not (text[i - 1:i].isalpha() and text[i + 1:i + 2].isalpha())]
    positions += [m.start() for m in _EARLY_PERIOD.finditer(text)]
    # bytes keep one position per character, and bytes.lower() only touches ASCII: a conservative search
    positions += [m.start() for m in _SPLIT_WORDS_BYTES.finditer(text.encode("latin-1", "replace").lower())]
    special = set((np.searchsorted(line_starts, positions, side="right") - 1).tolist())
    for i in (np.searchsorted(line_starts, [m.start() for m in _FINAL_PERIOD.finditer(text)], side="right")
              - 1).tolist():
        if plain[i].rpartition(" ")[2] in _PERIOD_WORDS:
            special.add(i)
    return sorted(special)


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on `captions` lexed as one file, in this order: one string per caption.

    Each result is the space-joined lowercased PTB tokens minus pycocoevalcap's PUNCTUATIONS, as pycocoevalcap
    returns it. The order matters only in rare cases (see the module docstring); pass captions in the order
    pycocoevalcap would (``tokenize_captions`` does).
    """
    text = "\n".join(captions)
    if text.count("\n") == len(captions) - 1 and _LINE_BREAKS.search(text) is None:
        lines = captions  # the common case: no line breaks inside captions
    else:
        lines = [_LINE_BREAKS.sub(" ", c.replace("\n", " ")) for c in captions]
        text = "\n".join(lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]]) if len(lines) else np.zeros(0, np.int64)
    results = _plain_results(text) if lines else []
    for i in _special_lines(text, starts, results):
        start = int(starts[i])
        raw = _lex_line(text, start, start + len(lines[i]))
        results[i] = " ".join(t for t in map(_java_lower, raw) if t not in PTB_PUNCTUATIONS)
    return results


def ptb_raw_tokens(caption: str) -> list[str]:
    """The PTB tokens of one caption before lowercasing and punctuation removal (for debugging parity)."""
    return _lex_line(caption, 0, len(caption))


def tokenize_captions(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """Tokenize {id: [caption, ...]} exactly as pycocoevalcap's PTBTokenizer.tokenize (same file order)."""
    flat = ptb_tokenize([c for caps in captions.values() for c in caps])
    out, i = {}, 0
    for key, caps in captions.items():
        out[key] = flat[i:i + len(caps)]
        i += len(caps)
    return out


# ---------------------------------------------------------------------------------------------------------------
# N-gram statistics shared by BLEU and CIDEr-D
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """Sentences as the scorers see them: image by image, each image's hypothesis followed by its references."""
    sentences: list[str]
    image: np.ndarray        # image index of each sentence
    is_hyp: np.ndarray       # True for the hypothesis sentences
    hyp: np.ndarray          # sentence index of each image's hypothesis
    refs: np.ndarray         # sentence indices of all references, image by image
    n_refs: np.ndarray       # number of references of each image

    @classmethod
    def build(cls, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> _Layout:
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
        if not references:
            raise ValueError("nothing to score: no captions given")
        if any(len(refs) == 0 for refs in references):
            raise ValueError("every hypothesis needs at least one reference")
        n_refs = np.fromiter(map(len, references), np.int64, len(references))
        sentences = [s for hyp, refs in zip(hypotheses, references) for s in (hyp, *refs)]
        image = np.repeat(np.arange(len(hypotheses)), n_refs + 1)
        hyp = np.cumsum(n_refs + 1) - (n_refs + 1)
        is_hyp = np.zeros(len(sentences), bool)
        is_hyp[hyp] = True
        return cls(sentences, image, is_hyp, hyp, np.flatnonzero(~is_hyp), n_refs)


@dataclass(frozen=True)
class _Groups:
    """The distinct n-grams of one order in every sentence, sorted by (n-gram, sentence)."""
    ngram: np.ndarray        # dense n-gram id, non-decreasing
    sentence: np.ndarray     # sentence holding the n-gram
    count: np.ndarray        # occurrences in that sentence
    first: np.ndarray        # token index of the first occurrence: pycocoevalcap's dicts iterate in this order
    segment: np.ndarray      # start of each run of groups with the same n-gram and image (hypothesis first)


@dataclass(frozen=True)
class _Tokens:
    """The tokens of a list of sentences, as word ids in one array."""
    words: list[str]
    ids: np.ndarray          # word id of each token, sentence after sentence
    lengths: np.ndarray      # tokens per sentence
    vocab_size: int
    space_split: bool
    """Whether these are also the str.split(" ") tokens (rouge.py's), i.e. the text is single-spaced words."""

    @classmethod
    def split(cls, sentences: Sequence[str], on_spaces: bool = False) -> _Tokens:
        """str.split() tokens (BLEU and CIDEr), or str.split(" ") tokens (ROUGE-L) when `on_spaces`."""
        joined = " ".join(sentences)  # joining with " " keeps both splits' tokens, even split(" ")'s empty ones
        # A leading, trailing or doubled space, or an empty sentence, shows in the joined text at an end or as a
        # double space; without those and other whitespace both splits agree.
        single_spaced = (joined[:1] not in ("", " ") and joined[-1] != " " and "  " not in joined
                         and _OTHER_WHITESPACE.search(joined) is None)
        if on_spaces or single_spaced:
            words = joined.split(" ")
            lengths = np.fromiter((s.count(" ") + 1 for s in sentences), np.int64, len(sentences))
        else:
            words = joined.split()
            lengths = np.fromiter(map(len, map(str.split, sentences)), np.int64, len(sentences))
        vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        ids = np.fromiter(map(vocab.__getitem__, words), np.int64, len(words))
        return cls(words, ids, lengths, len(vocab), on_spaces or single_spaced)

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths


_OTHER_WHITESPACE = re.compile(r"[^\S ]")


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of range(start, start + length) for each pair."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


class _Ngrams:
    """Whitespace tokens (str.split, as pycocoevalcap's precook) and their n-grams of orders 1..max_n."""

    def __init__(self, layout: _Layout, max_n: int, tokens: _Tokens | None = None):
        self.layout = layout
        self.tokens = tokens = tokens or _Tokens.split(layout.sentences)
        ids, lengths = tokens.ids, tokens.lengths
        self.token_sentence = sentence = np.repeat(np.arange(len(lengths)), lengths)
        remaining = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(ids))  # tokens left in the sentence
        self.orders: list[_Groups] = []
        dense = ids  # dense id of the (k-1)-gram starting at each token
        for k in range(1, max_n + 1):
            groups, dense = self._group(ids, dense, sentence, remaining, k, max(tokens.vocab_size, 1))
            self.orders.append(groups)

    def _group(self, ids: np.ndarray, dense: np.ndarray, sentence: np.ndarray, remaining: np.ndarray, k: int,
               vocab_size: int) -> tuple[_Groups, np.ndarray]:
        """The groups of order k, and the dense id of the k-gram starting at each token (-1 where none does)."""
        starts = np.flatnonzero(remaining >= k)
        code = ids[starts] if k == 1 else dense[starts] * vocab_size + ids[starts + k - 1]
        n_sentences = max(len(self.tokens.lengths), 1)
        if len(code) and (int(code.max()) + 1) * n_sentences >= 2 ** 62:  # keep the sort key inside int64
            code = np.unique(code, return_inverse=True)[1].astype(np.int64)
        key = code * n_sentences + sentence[starts]
        order = np.argsort(key)
        key, starts = key[order], starts[order]
        begin = _run_starts(key)
        count = np.diff(np.append(begin, len(key)))
        group_code = key[begin] // n_sentences
        ngram = np.cumsum(_run_flags(group_code)) - 1
        group_sentence = key[begin] - group_code * n_sentences
        image = self.layout.image[group_sentence]
        segment = np.flatnonzero(_run_flags(ngram) | _run_flags(image))
        first = np.minimum.reduceat(starts, begin) if len(begin) else begin
        next_dense = np.full(len(ids), -1, np.int64)
        next_dense[starts] = np.repeat(ngram, count)
        return _Groups(ngram, group_sentence, count, first, segment), next_dense

    def ngram_words(self, k: int) -> list[tuple[str, ...]]:
        """The words of each dense n-gram id of order k."""
        groups = self.orders[k - 1]
        firsts = groups.first[np.flatnonzero(_run_flags(groups.ngram))]
        words = self.tokens.words
        return [tuple(words[t:t + k]) for t in firsts.tolist()]


def _run_flags(values: np.ndarray) -> np.ndarray:
    """True where a run of equal values starts."""
    flags = np.ones(len(values), bool)
    flags[1:] = values[1:] != values[:-1]
    return flags


def _run_starts(values: np.ndarray) -> np.ndarray:
    return np.flatnonzero(_run_flags(values))


def _segment_hyp_group(groups: _Groups, layout: _Layout) -> np.ndarray:
    """For each group, the hypothesis group of the same n-gram and image, or -1 (hypothesis groups sort first)."""
    seg_len = np.diff(np.append(groups.segment, len(groups.ngram)))
    head = groups.segment
    hyp_of_segment = np.where(layout.is_hyp[groups.sentence[head]], head, -1)
    return np.repeat(hyp_of_segment, seg_len)


# ---------------------------------------------------------------------------------------------------------------
# BLEU (pycocoevalcap/bleu/bleu_scorer.py, option="closest")
# ---------------------------------------------------------------------------------------------------------------

# bleu_scorer.py adds these to numerator and denominator ("so that if guess is 0 still return 0").
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4
         ) -> tuple[list[float], list[list[float]]]:
    """BLEU-1..n as pycocoevalcap's Bleu(n): (corpus scores, per-image scores [image][order]).

    Sentences are whitespace-tokenized as given (tokenize them first with ``ptb_tokenize``).
    """
    layout = _Layout.build(hypotheses, references)
    return _bleu(_Ngrams(layout, n), n)


def _bleu(ngrams: _Ngrams, n: int) -> tuple[list[float], list[list[float]]]:
    layout = ngrams.layout
    test_len = ngrams.tokens.lengths[layout.hyp]
    ref_len = _closest_ref_len(ngrams.tokens.lengths[layout.refs], layout.n_refs, test_len)
    correct = np.stack([_clipped_matches(g, layout) for g in ngrams.orders[:n]], axis=1)
    guess = np.maximum(0, test_len[:, None] - np.arange(n)[None, :])
    per_image = _bleu_scores(correct, guess, test_len, ref_len)
    corpus = _bleu_scores(correct.sum(axis=0, keepdims=True), guess.sum(axis=0, keepdims=True),
                          test_len.sum(keepdims=True), ref_len.sum(keepdims=True))[0]
    return corpus, per_image


def _closest_ref_len(ref_lengths: np.ndarray, n_refs: np.ndarray, test_len: np.ndarray) -> np.ndarray:
    """Per image, the reference length closest to the hypothesis length; the shorter one on ties."""
    image = np.repeat(np.arange(len(n_refs)), n_refs)
    scale = int(ref_lengths.max()) + 1
    key = np.abs(ref_lengths - test_len[image]) * scale + ref_lengths
    return np.minimum.reduceat(key, np.cumsum(n_refs) - n_refs) % scale


def _clipped_matches(groups: _Groups, layout: _Layout) -> np.ndarray:
    """Per image, the hypothesis n-gram counts clipped by the largest count in any one reference."""
    hyp_count = np.where(layout.is_hyp[groups.sentence], groups.count, 0)
    ref_count = groups.count - hyp_count
    if len(groups.segment) == 0:
        return np.zeros(len(layout.hyp), np.int64)
    clipped = np.minimum(hyp_count[groups.segment], np.maximum.reduceat(ref_count, groups.segment))
    image = layout.image[groups.sentence[groups.segment]]
    return np.bincount(image, weights=clipped, minlength=len(layout.hyp)).astype(np.int64)


def _bleu_scores(correct: np.ndarray, guess: np.ndarray, test_len: np.ndarray, ref_len: np.ndarray
                 ) -> list[list[float]]:
    """BleuScorer.compute_score's arithmetic for each row, operation for operation.

    Products, quotients and sums are exact IEEE operations in numpy too; the powers and the exponential are
    taken with Python's float ** and math.exp, as bleu_scorer.py does (numpy's SIMD versions may round
    differently).
    """
    products = np.cumprod((correct + _BLEU_TINY) / (guess + _BLEU_SMALL), axis=1)  # bleu *= ..., k = 1..n
    exponents = [1.0 / (k + 1) for k in range(correct.shape[1])]
    scores = [[p ** e for p, e in zip(row, exponents)] for row in products.tolist()]
    ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    for i in np.flatnonzero(ratio < 1).tolist():
        penalty = math.exp(1 - 1 / float(ratio[i]))
        scores[i] = [s * penalty for s in scores[i]]
    return scores


# ---------------------------------------------------------------------------------------------------------------
# ROUGE-L (pycocoevalcap/rouge/rouge.py)
# ---------------------------------------------------------------------------------------------------------------

_ROUGE_BETA = 1.2
_WORD_BITS = 64
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.int64)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
    """ROUGE-L as pycocoevalcap's Rouge: (mean over images, per-image scores).

    Per image: precision and recall maxed separately over the references, then F with beta = 1.2. Tokens are
    split on single spaces, as rouge.py does (so "" is one empty token).
    """
    layout = _Layout.build(hypotheses, references)
    return _rouge_l(layout, _Tokens.split(layout.sentences, on_spaces=True))


def _rouge_l(layout: _Layout, tokens: _Tokens) -> tuple[float, np.ndarray]:
    hyp_len = tokens.lengths[layout.hyp].astype(np.float64)
    ref_len = tokens.lengths[layout.refs].astype(np.float64)
    pair_image = layout.image[layout.refs]
    lcs = _lcs_lengths(tokens, layout)
    begin = np.cumsum(layout.n_refs) - layout.n_refs
    prec = np.maximum.reduceat(lcs / hyp_len[pair_image], begin)
    rec = np.maximum.reduceat(lcs / ref_len, begin)
    beta2 = _ROUGE_BETA ** 2
    scores = np.zeros(len(layout.hyp))
    ok = (prec != 0) & (rec != 0)
    scores[ok] = ((1 + beta2) * prec[ok] * rec[ok]) / (rec[ok] + beta2 * prec[ok])
    return float(np.mean(scores)), scores


def _lcs_lengths(tokens: _Tokens, layout: _Layout) -> np.ndarray:
    """LCS length of each (hypothesis, reference) pair, for all pairs at once (bit-parallel, Hyyro 2004).

    Bit i of a pair's state word stands for hypothesis token i; one step per reference token. Hypotheses
    longer than 64 tokens take a plain dynamic programme.
    """
    offsets, lengths, ids = tokens.offsets, tokens.lengths, tokens.ids
    pair_image = layout.image[layout.refs]
    hyp_len = lengths[layout.hyp]
    lcs = np.zeros(len(layout.refs), np.float64)
    for p in np.flatnonzero(hyp_len[pair_image] > _WORD_BITS).tolist():
        hyp, ref = layout.hyp[pair_image[p]], layout.refs[p]
        lcs[p] = _lcs_dp(ids[offsets[hyp]:offsets[hyp] + lengths[hyp]].tolist(),
                         ids[offsets[ref]:offsets[ref] + lengths[ref]].tolist())
    masks = _reference_token_masks(tokens, layout)
    ref_len = lengths[layout.refs]
    pair_start = np.cumsum(ref_len) - ref_len
    pairs = np.flatnonzero(hyp_len[pair_image] <= _WORD_BITS)
    pairs = pairs[np.argsort(-ref_len[pairs], kind="stable")]  # the pairs still running form a prefix
    running = np.searchsorted(-ref_len[pairs], -np.arange(int(ref_len.max(initial=0))), side="left")
    state = np.full(len(pairs), np.iinfo(np.uint64).max, np.uint64)
    for j, n in enumerate(running.tolist()):
        u = state[:n] & masks[pair_start[pairs[:n]] + j]
        state[:n] = (state[:n] + u) | (state[:n] - u)
    m = hyp_len[pair_image[pairs]]
    low_bits = np.where(m == _WORD_BITS, np.iinfo(np.uint64).max,
                        (np.uint64(1) << np.minimum(m, _WORD_BITS - 1).astype(np.uint64)) - np.uint64(1))
    lcs[pairs] = m - _popcount(state & low_bits)
    return lcs


def _reference_token_masks(tokens: _Tokens, layout: _Layout) -> np.ndarray:
    """For every reference token, the bitmask of the positions of that word in its image's hypothesis."""
    offsets, lengths, ids = tokens.offsets, tokens.lengths, tokens.ids
    vocab = max(tokens.vocab_size, 1)
    hyp_len = lengths[layout.hyp]
    hyp_tokens = _ranges(offsets[layout.hyp], hyp_len)
    position = hyp_tokens - np.repeat(offsets[layout.hyp], hyp_len)
    key = np.repeat(np.arange(len(layout.hyp)), hyp_len) * vocab + ids[hyp_tokens]
    order = np.argsort(key)
    key, position = key[order], position[order]
    bits = np.where(position < _WORD_BITS, np.uint64(1) << np.minimum(position, _WORD_BITS - 1).astype(np.uint64),
                    np.uint64(0))
    begin = _run_starts(key)  # every hypothesis has a token: str.split(" ") never returns []
    keys, word_masks = key[begin], np.bitwise_or.reduceat(bits, begin)
    ref_len = lengths[layout.refs]
    ref_key = np.repeat(layout.image[layout.refs], ref_len) * vocab + ids[_ranges(offsets[layout.refs], ref_len)]
    found = np.searchsorted(keys, ref_key).clip(max=len(keys) - 1)
    return np.where(keys[found] == ref_key, word_masks[found], np.uint64(0))


def _popcount(x: np.ndarray) -> np.ndarray:
    return _POPCOUNT8[x.view(np.uint8)].reshape(-1, 8).sum(axis=1)


def _lcs_dp(a: Sequence, b: Sequence) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


# ---------------------------------------------------------------------------------------------------------------
# CIDEr-D (pycocoevalcap/cider/cider_scorer.py)
# ---------------------------------------------------------------------------------------------------------------

class CiderD:
    """CIDEr-D as pycocoevalcap's Cider (n-grams 1..n, Gaussian length penalty sigma, clipping, x10).

    ``CiderD()`` takes the document frequencies from the references of each scored set, exactly as
    pycocoevalcap does. ``CiderD(corpus_references)`` fixes them once from a reference corpus (one list of
    tokenized captions per image, e.g. the training set for an SCST reward) and reuses them for every call;
    log(number of corpus images) then replaces log(number of scored images).
    """

    def __init__(self, corpus_references: Sequence[Sequence[str]] | None = None, n: int = 4,
                 sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        self._corpus_df: dict[tuple[str, ...], int] | None = None
        self._corpus_log_size = 0.0
        if corpus_references is not None:
            self._corpus_df, self._corpus_log_size = self._document_frequencies(corpus_references)

    def _document_frequencies(self, corpus: Sequence[Sequence[str]]) -> tuple[dict[tuple[str, ...], int], float]:
        layout = _Layout.build([""] * len(corpus), corpus)
        ngrams = _Ngrams(layout, self.n)
        df: dict[tuple[str, ...], int] = {}
        for k in range(1, self.n + 1):
            df.update(zip(ngrams.ngram_words(k), _set_document_frequency(ngrams.orders[k - 1], layout).tolist()))
        return df, np.log(float(len(corpus)))

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of each hypothesis against its references (whitespace tokens, as given)."""
        ngrams = _Ngrams(_Layout.build(hypotheses, references), self.n)
        return self._score(ngrams)

    def _score(self, ngrams: _Ngrams) -> np.ndarray:
        layout = ngrams.layout
        # pycocoevalcap: ref_len = np.log(float(len(self.crefs))), with df counted over the scored set.
        log_size = self._corpus_log_size if self._corpus_df is not None else np.log(float(len(layout.hyp)))
        bigrams = np.maximum(ngrams.tokens.lengths - 1, 0)  # cider_scorer.py's "length" counts bigrams (n == 1)
        delta = bigrams[layout.hyp][layout.image[layout.refs]] - bigrams[layout.refs]
        penalty = self._length_penalties(delta)
        per_order = []
        for k in range(1, self.n + 1):
            groups = ngrams.orders[k - 1]
            df = self._frequencies(ngrams, k, layout)
            per_order.append(_cider_order(groups, layout, ngrams.token_sentence, df, log_size, penalty))
        score = np.mean(np.stack(per_order, axis=1), axis=1)  # np.mean(score) over the n orders
        return score / layout.n_refs * 10.0

    def _frequencies(self, ngrams: _Ngrams, k: int, layout: _Layout) -> np.ndarray:
        if self._corpus_df is None:
            return _set_document_frequency(ngrams.orders[k - 1], layout)
        get = self._corpus_df.get
        return np.fromiter((get(words, 0) for words in ngrams.ngram_words(k)), np.int64)

    def _length_penalties(self, delta: np.ndarray) -> np.ndarray:
        """np.e ** (-(delta ** 2) / (2 * sigma ** 2)), evaluated as cider_scorer.py does (Python float pow)."""
        values = {d: np.e ** (-(float(d) ** 2) / (2 * self.sigma ** 2)) for d in set(delta.tolist())}
        return np.fromiter((values[d] for d in delta.tolist()), np.float64, len(delta))


def _set_document_frequency(groups: _Groups, layout: _Layout) -> np.ndarray:
    """Per n-gram, the number of images whose references contain it (hypotheses do not count)."""
    seg_len = np.diff(np.append(groups.segment, len(groups.ngram)))
    has_ref = seg_len > layout.is_hyp[groups.sentence[groups.segment]]
    n_ngrams = int(groups.ngram[-1]) + 1 if len(groups.ngram) else 0
    return np.bincount(groups.ngram[groups.segment[has_ref]], minlength=n_ngrams)


def _cider_order(groups: _Groups, layout: _Layout, token_sentence: np.ndarray, df: np.ndarray, log_size: float,
                 penalty: np.ndarray) -> np.ndarray:
    """Per image, the order-k similarity summed over its references, in cider_scorer.py's float operations."""
    n_images = len(layout.hyp)
    if len(groups.ngram) == 0:
        return np.zeros(n_images)
    group_df = df[groups.ngram]
    idf, square = _idf_tables(group_df, groups.count, log_size)
    weight = groups.count.astype(np.float64) * idf[group_df]  # float(term_freq) * (ref_len - df)
    # norm[n] += pow(vec[n][ngram], 2) in the order the sentence's n-grams first occur: place each square at its
    # first occurrence and sum the tokens in text order (adding the zeros in between changes nothing)
    n_tokens = len(token_sentence)
    at_first = np.zeros(n_tokens)
    at_first[groups.first] = square[groups.count, group_df]
    norm = np.sqrt(np.bincount(token_sentence, weights=at_first, minlength=len(layout.sentences)))
    hyp_group = _segment_hyp_group(groups, layout)
    matched = np.flatnonzero(~layout.is_hyp[groups.sentence] & (hyp_group >= 0))
    partner = hyp_group[matched]
    # val[n] += min(vec_hyp, vec_ref) * vec_ref, summed per reference in the hypothesis's n-gram order
    term = np.minimum(weight[partner], weight[matched]) * weight[matched]
    order = np.argsort(groups.sentence[matched] * n_tokens + groups.first[partner])
    val = np.bincount(groups.sentence[matched][order], weights=term[order], minlength=len(layout.sentences))
    val = val[layout.refs]
    norm_hyp = norm[layout.hyp][layout.image[layout.refs]]
    norm_ref = norm[layout.refs]
    both = (norm_hyp != 0) & (norm_ref != 0)
    val[both] = val[both] / (norm_hyp[both] * norm_ref[both])
    val = val * penalty
    return np.bincount(layout.image[layout.refs], weights=val, minlength=n_images)


def _idf_tables(df: np.ndarray, count: np.ndarray, log_size: float) -> tuple[np.ndarray, np.ndarray]:
    """idf[df] = ref_len - np.log(max(1.0, df)) and square[count, df] = pow(count * idf, 2) for the pairs used.

    Both are computed per distinct value with the scalar calls cider_scorer.py makes: numpy's vectorised log and
    libm's pow may round differently from the scalar ones, and pow(x, 2) is not always x * x.
    """
    max_df = int(df.max(initial=0))
    idf = np.zeros(max_df + 1)
    for d in np.flatnonzero(np.bincount(df)).tolist():
        idf[d] = log_size - np.log(max(1.0, float(d)))
    square = np.zeros((int(count.max()) + 1, max_df + 1))
    used = np.zeros(square.shape, bool)
    used[count, df] = True
    for c, d in zip(*np.nonzero(used)):
        square[c, d] = pow(float(c) * idf[d], 2)
    return idf, square


# ---------------------------------------------------------------------------------------------------------------
# METEOR and SPICE: pycocoevalcap's Java scorers, or a reason why they cannot run
# ---------------------------------------------------------------------------------------------------------------

class MetricUnavailable(RuntimeError):
    """A metric that needs Java and pycocoevalcap could not be computed; the message says why."""


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """METEOR 1.5 through pycocoevalcap (Java): (corpus score, per-image scores). Raises MetricUnavailable."""
    scorer = _java_scorer("METEOR", "pycocoevalcap.meteor.meteor", "Meteor")
    try:
        score, scores = scorer.compute_score(*_coco_inputs(hypotheses, references))
    except Exception as exc:  # a dead JVM shows up as a ValueError on its empty output
        raise _failed("METEOR", exc) from exc
    finally:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        if scorer.lock.locked():  # left held by a failed compute_score; Meteor.__del__ would wait on it forever
            scorer.lock.release()
    return float(score), [float(s) for s in scores]


def spice(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """SPICE through pycocoevalcap (Java; downloads Stanford CoreNLP on first use): (corpus score, per-image
    F-scores). Raises MetricUnavailable."""
    scorer = _java_scorer("SPICE", "pycocoevalcap.spice.spice", "Spice")
    try:
        score, scores = scorer.compute_score(*_coco_inputs(hypotheses, references))
    except Exception as exc:
        raise _failed("SPICE", exc) from exc
    return float(score), [float(s["All"]["f"]) for s in scores]  # in sorted id order, i.e. input order


def _java_scorer(name: str, module: str, cls: str) -> object:
    if shutil.which("java") is None:
        raise MetricUnavailable(f"java not found: {name} runs the official Java program; install a Java runtime "
                                "(e.g. OpenJDK: apt install default-jre) to compute it")
    try:
        scorer_class = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise MetricUnavailable(f"pycocoevalcap, which runs {name}, is not importable ({exc}); reinstall "
                                "verbovision (it depends on pycocoevalcap)") from exc
    try:
        return scorer_class()
    except Exception as exc:  # SPICE fetches CoreNLP here, which fails offline
        raise _failed(name, exc) from exc


def _failed(name: str, exc: Exception) -> MetricUnavailable:
    """The reason a Java scorer failed, on one line (a JVM's messages run over several)."""
    return MetricUnavailable(" ".join(f"{name} failed: {type(exc).__name__}: {exc}".split()))


def _coco_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """pycocoevalcap's gts and res dicts, keyed by position."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    return dict(enumerate(map(list, references))), {i: [h] for i, h in enumerate(hypotheses)}


# ---------------------------------------------------------------------------------------------------------------
# Word and character error rates
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErrorRate:
    corpus: float
    """Total edits / total reference length."""
    per_item: dict
    """Per item: edits / reference length of the chosen reference."""
    edits: int
    reference_length: int


def wer(predictions: Mapping[object, str], references: Mapping[object, str | Sequence[str]]) -> ErrorRate:
    """Word error rate over whitespace tokens (case and punctuation as given)."""
    return _error_rate(predictions, references, str.split)


def cer(predictions: Mapping[object, str], references: Mapping[object, str | Sequence[str]]) -> ErrorRate:
    """Character error rate over the text with runs of whitespace collapsed to one space and ends stripped."""
    return _error_rate(predictions, references, lambda text: list(" ".join(text.split())))


def _error_rate(predictions: Mapping[object, str], references: Mapping[object, str | Sequence[str]],
                units: Callable[[str], list[str]]) -> ErrorRate:
    """With several references an item is scored against the one needing the fewest edits (on ties, the longer
    one, which gives the lower rate)."""
    total_edits = total_length = 0
    per_item = {}
    for key, prediction in predictions.items():
        hyp = units(prediction)
        candidates = [(_edit_distance(hyp, ref), -len(ref)) for ref in map(units, _as_list(references[key]))]
        edits, neg_length = min(candidates)
        per_item[key] = edits / -neg_length if neg_length else float(edits > 0)
        total_edits += edits
        total_length -= neg_length
    corpus = total_edits / total_length if total_length else float(total_edits > 0)
    return ErrorRate(corpus, per_item, total_edits, total_length)


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance (unit costs) between two token sequences."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _as_list(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


# ---------------------------------------------------------------------------------------------------------------
# VQA: VQAv2 accuracy (vqaEval.py, exactly), TextVQA accuracy (m4c), exact match, numbers, multiple-choice letters
# ---------------------------------------------------------------------------------------------------------------

# vqaEval.py's tables, verbatim (including its odd entries, e.g. "somebody'd" -> "somebodyd").
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've"}
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = frozenset(["a", "an", "the"])
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
              "!"]
# vqaEval.py passes re.UNICODE (32) where sub() takes its count: at most 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


# Case mappings Unicode gained after 5.2, the database of Python 2.7, whose lower() leaves these characters as they
# are (found by comparing Python 2.7.18's unicode.lower() with Python 3.11's str.lower(), character by character).
_PY2_UNLOWERED = frozenset(chr(c) for first, last in (
    (0x037F, 0x037F), (0x0526, 0x0526), (0x0528, 0x0528), (0x052A, 0x052A), (0x052C, 0x052C), (0x052E, 0x052E),
    (0x10C7, 0x10C7), (0x10CD, 0x10CD), (0x13A0, 0x13F5), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x2C2F, 0x2C2F),
    (0x2CF2, 0x2CF2), (0xA660, 0xA660), (0xA698, 0xA698), (0xA69A, 0xA69A), (0xA78D, 0xA78D), (0xA790, 0xA790),
    (0xA792, 0xA792), (0xA796, 0xA796), (0xA798, 0xA798), (0xA79A, 0xA79A), (0xA79C, 0xA79C), (0xA79E, 0xA79E),
    (0xA7A0, 0xA7A0), (0xA7A2, 0xA7A2), (0xA7A4, 0xA7A4), (0xA7A6, 0xA7A6), (0xA7A8, 0xA7A8), (0xA7AA, 0xA7AE),
    (0xA7B0, 0xA7B4), (0xA7B6, 0xA7B6), (0xA7B8, 0xA7B8), (0xA7BA, 0xA7BA), (0xA7BC, 0xA7BC), (0xA7BE, 0xA7BE),
    (0xA7C0, 0xA7C0), (0xA7C2, 0xA7C2), (0xA7C4, 0xA7C7), (0xA7C9, 0xA7C9), (0xA7D0, 0xA7D0), (0xA7D6, 0xA7D6),
    (0xA7D8, 0xA7D8), (0xA7F5, 0xA7F5), (0x104B0, 0x104D3), (0x10570, 0x1057A), (0x1057C, 0x1058A),
    (0x1058C, 0x10592), (0x10594, 0x10595), (0x10C80, 0x10CB2), (0x118A0, 0x118BF), (0x16E40, 0x16E5F),
    (0x1E900, 0x1E921)) for c in range(first, last + 1))
# Python 2.7's whitespace: Python 3's plus U+180E (a space separator until Unicode 6.3).
_PY2_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "\u180e"


def _py2_lower(text: str) -> str:
    """Python 2.7's unicode.lower(): one character to one (Python 3 maps U+0130 to two, and a capital sigma that
    ends a word to the final form), with Unicode 5.2's mappings."""
    if text.isascii():
        return text.lower()
    return "".join(c if c in _PY2_UNLOWERED else "i" if c == "\u0130" else c.lower() for c in text)


def _py2_words(text: str) -> list[str]:
    return _py2_lower(text).replace("\u180e", " ").split()


def _py3_words(text: str) -> list[str]:
    return text.lower().split()


@dataclass(frozen=True)
class _AnswerProcessor:
    """vqaEval.py's answer steps (clean, processPunctuation, processDigitArticle) under one Python's semantics."""

    # "(?!<=\d)" is vqaEval.py's bug, kept: a lookahead that never fails, not the lookbehind it meant
    period_strip: re.Pattern
    comma_strip: re.Pattern
    whitespace: str | None
    """What strip() strips (None: Python 3's whitespace)."""
    words: Callable[[str], list[str]]
    """Lowercase, then split on whitespace."""

    def clean(self, text: str) -> str:
        return text.replace("\n", " ").replace("\t", " ").strip(self.whitespace)

    def punctuation(self, text: str) -> str:
        out = text
        for p in _VQA_PUNCT:  # each test looks at the input text, not at the text being edited
            if p + " " in text or " " + p in text or self.comma_strip.search(text) is not None:
                out = out.replace(p, "")
            else:
                out = out.replace(p, " ")
        return self.period_strip.sub("", out, count=_PERIOD_STRIP_COUNT)

    def digits_articles(self, text: str) -> str:
        words = [_VQA_NUMBERS.get(w, w) for w in self.words(text)]
        return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)

    def __call__(self, text: str) -> str:
        return self.digits_articles(self.punctuation(text))


# vqaEval.py is Python 2 code: there "\d" matches only 0-9 (no re.UNICODE flag), and lower() and whitespace are
# Python 2.7's.
_VQAEVAL = _AnswerProcessor(re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII), re.compile(r"(\d)(,)(\d)", re.ASCII),
                            _PY2_WHITESPACE, _py2_words)
# m4c's EvalAIAnswerProcessor is Python 3 code, with its own comma rule (which never fires: it drops commas first).
_EVALAI = _AnswerProcessor(re.compile(r"(?!<=\d)(\.)(?!\d)"), re.compile(r"(?<=\d)(,)+(?=\d)"), None, _py3_words)


def normalize_vqa_answer(text: str) -> str:
    """vqaEval.py's processing of an answer when the human answers disagree: tabs and newlines to spaces, strip,
    processPunctuation, then processDigitArticle (lowercase, number words to digits, articles dropped,
    contractions given their apostrophe)."""
    return _VQAEVAL(_VQAEVAL.clean(text))


def normalize_textvqa_answer(text: str) -> str:
    """m4c's EvalAIAnswerProcessor (TextVQA): lowercase, drop "," and "?", "'s" -> " 's", strip, then the same
    punctuation and digit/article steps as vqaEval.py."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _EVALAI(_EVALAI.clean(text))


def _sum_in_order(values: Iterable[float]) -> float:
    """Left-to-right float sum, as Python 2's and Python <= 3.11's sum() (3.12's compensates rounding errors)."""
    total = 0.0
    for value in values:
        total += value
    return total


def _leave_one_out(predicted: str, answers: Sequence[str]) -> float:
    """The mean over annotators i of min(1, matches among the answers other than i's / 3), summed in order."""
    matched = [answer == predicted for answer in answers]
    total = sum(matched)
    return _sum_in_order(min(1, (total - m) / 3) for m in matched) / len(answers)


def vqa_accuracy(prediction: str, answers: str | Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction, exactly as the official vqaEval.py (GT-Vision-Lab/VQA) computes it.

    Tabs and newlines become spaces and both ends are stripped. If the human answers are then not all identical,
    the prediction and every answer go through ``normalize_vqa_answer``; if they are, the stripped raw strings are
    compared (so "Four" against ten "4" scores 0). Leaving out each annotator in turn, the prediction earns
    min(1, matching other answers / 3); the accuracy is the mean of those, summed in annotator order (the last
    bit can depend on that order). Each answer is one annotator's: with one answer the score is always 0.
    """
    answers = [_VQAEVAL.clean(a) for a in _as_list(answers)]
    if not answers:
        raise ValueError("vqa_accuracy needs at least one answer")
    predicted = _VQAEVAL.clean(prediction)
    if len(set(answers)) > 1:
        answers = [_VQAEVAL(a) for a in answers]
        predicted = _VQAEVAL(predicted)
    return _leave_one_out(predicted, answers)


def textvqa_accuracy(prediction: str, answers: str | Sequence[str]) -> float:
    """TextVQA accuracy, as m4c's TextVQAAccuracyEvaluator (the one LLaVA's eval_textvqa runs): the prediction
    and every answer always go through ``normalize_textvqa_answer``, then the same leave-one-out mean (m4c asserts
    10 answers; any number is scored here)."""
    answers = [normalize_textvqa_answer(a) for a in _as_list(answers)]
    if not answers:
        raise ValueError("textvqa_accuracy needs at least one answer")
    return _leave_one_out(normalize_textvqa_answer(prediction), answers)


def normalize_exact(text: str) -> str:
    """Exact-match normalisation: strip, lowercase, collapse whitespace, drop one final period."""
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    predicted = normalize_exact(prediction)
    return float(any(predicted == normalize_exact(r) for r in _as_list(references)))


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
    values = [v for v in map(extract_number, _as_list(references)) if v is not None]
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
    return float(letter is not None and any(letter == r.strip().upper() for r in _as_list(references)))


_VQA_KINDS: dict[str, Callable[[str, str | Sequence[str]], float]] = {
    "vqa": vqa_accuracy, "textvqa": textvqa_accuracy, "exact": exact_match, "numeric": numeric_match,
    "choice": choice_match}


@dataclass(frozen=True)
class VqaScores:
    mean: float
    """Mean of the per-item scores, summed in their order."""
    per_item: dict
    """id -> score in [0, 1]."""
    by_type: dict[str, dict[str, float]]
    """Type name (e.g. "answer_type") -> type -> mean score of its items, for the types given."""
    official: dict
    """kind "vqa": vqaEval.py's ``accuracy`` -- "overall" and, per type name, type -> percentage, each rounded to
    2 decimals as vqaEval.py rounds them; empty for the other kinds."""


def score_vqa(predictions: Mapping[object, str], answers: Mapping[object, str | Sequence[str]],
              kind: str = "vqa", types: Mapping[str, Mapping[object, str]] | None = None) -> VqaScores:
    """Per-item scores of `kind`, their mean, and their mean per type (`types`: type name -> id -> type).

    Kinds: "vqa" (VQAv2 accuracy, vqaEval.py), "textvqa" (TextVQA accuracy, m4c), "exact", "numeric", "choice".
    Items are taken, and their scores summed, in the order vqaEval.py takes them for "vqa" (that of `answers`,
    its annotation file) and in that of `predictions` otherwise (m4c's results file).
    """
    if kind not in _VQA_KINDS:
        raise ValueError(f"unknown VQA metric kind {kind!r}; expected one of {sorted(_VQA_KINDS)}")
    _check_same_ids(predictions, answers)
    score = _VQA_KINDS[kind]
    keys = list(answers if kind == "vqa" else predictions)
    per_item = {key: score(predictions[key], answers[key]) for key in keys}
    groups = {name: _group(per_item, of_item, name) for name, of_item in (types or {}).items()}
    by_type = {name: {t: _mean(scores) for t, scores in sorted(group.items())} for name, group in groups.items()}
    official = _vqaeval_accuracy(list(per_item.values()), groups) if kind == "vqa" and per_item else {}
    return VqaScores(_mean(list(per_item.values())), per_item, by_type, official)


def _mean(values: list[float]) -> float:
    return _sum_in_order(values) / len(values) if values else float("nan")


def _group(per_item: dict, of_item: Mapping[object, str], name: str) -> dict[str, list[float]]:
    missing = [key for key in per_item if key not in of_item][:5]
    if missing:
        raise ValueError(f"no {name} for ids {missing}")
    group: dict[str, list[float]] = {}
    for key, value in per_item.items():
        group.setdefault(of_item[key], []).append(value)
    return group


def _vqaeval_accuracy(scores: list[float], groups: dict[str, dict[str, list[float]]]) -> dict:
    """vqaEval.py's setAccuracy: round(100 * sum / count, 2) overall and per type."""
    return {"overall": _percent(scores),
            **{name: {t: _percent(s) for t, s in sorted(group.items())} for name, group in groups.items()}}


def _percent(scores: list[float]) -> float:
    return _round_half_away(100 * _sum_in_order(scores) / len(scores), 2)


def _round_half_away(value: float, digits: int) -> float:
    """Python 2's round(), which vqaEval.py calls: the exact binary value rounded half away from zero (Python 3's
    round() goes half to even: 0.625 -> 0.62 where Python 2 gives 0.63)."""
    return float(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaptionScores:
    corpus: dict[str, float]
    """Corpus scores named as pycocoevalcap names them: Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE."""
    per_image: dict
    """id -> {metric name: score of that image}."""
    skipped: dict[str, str]
    """Requested metrics that could not be computed -> the reason."""


CAPTION_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")


def score_captions(predictions: Mapping[object, str], references: Mapping[object, Sequence[str]],
                   metrics: Sequence[str] = ("bleu", "meteor", "rouge_l", "cider"),
                   tokenize: bool = True) -> CaptionScores:
    """Score one caption per image against its references as pycocoevalcap's COCOEvalCap does.

    `metrics` are some of CAPTION_METRICS ("spice" only on request). Images are scored in the order of
    `references` (pycocoevalcap iterates its gts dict); with `tokenize` the references and the predictions are
    PTB-tokenized in two batches in that order, as COCOEvalCap does; without it they are taken as tokenized.
    CIDEr-D's document frequencies come from these references. Per-image scores use the corpus names.
    """
    unknown = set(metrics) - set(CAPTION_METRICS)
    if unknown:
        raise ValueError(f"unknown caption metrics {sorted(unknown)}; expected some of {CAPTION_METRICS}")
    _check_same_ids(predictions, references)
    keys = list(references)
    hyps = [predictions[k] for k in keys]
    if not all(isinstance(h, str) for h in hyps):
        raise TypeError("predictions must map each id to one caption string")
    refs = [list(references[k]) for k in keys]
    if tokenize:
        hyps = ptb_tokenize(hyps)
        refs = list(tokenize_captions(dict(zip(keys, refs))).values())
    corpus: dict[str, float] = {}
    per_image: dict = {k: {} for k in keys}
    skipped: dict[str, str] = {}
    data = _CaptionData(hyps, refs)
    for metric in metrics:
        try:
            values, images = getattr(data, metric)()
        except MetricUnavailable as exc:
            skipped[metric] = str(exc)
            continue
        corpus.update(values)
        for key, scores in zip(keys, images):
            per_image[key].update(scores)
    return CaptionScores(corpus, per_image, skipped)


# A metric's corpus scores by name, and one {name: score} per image.
_MetricResult = tuple[dict[str, float], list[dict[str, float]]]


class _CaptionData:
    """One scored set, with the token and n-gram tables its metrics share; one method per metric name."""

    def __init__(self, hyps: list[str], refs: list[list[str]]):
        self.hyps, self.refs = hyps, refs
        self.layout = _Layout.build(hyps, refs)

    @functools.cached_property
    def _tokens(self) -> _Tokens:
        return _Tokens.split(self.layout.sentences)

    @functools.cached_property
    def _ngrams(self) -> _Ngrams:
        return _Ngrams(self.layout, 4, self._tokens)

    def bleu(self) -> _MetricResult:
        corpus, images = _bleu(self._ngrams, 4)
        names = [f"Bleu_{k}" for k in range(1, 5)]
        return dict(zip(names, corpus)), [dict(zip(names, s)) for s in images]

    def rouge_l(self) -> _MetricResult:
        tokens = self._tokens if self._tokens.space_split else _Tokens.split(self.layout.sentences, on_spaces=True)
        corpus, images = _rouge_l(self.layout, tokens)
        return {"ROUGE_L": corpus}, [{"ROUGE_L": float(s)} for s in images]

    def cider(self) -> _MetricResult:
        images = CiderD()._score(self._ngrams)
        return {"CIDEr": float(np.mean(images))}, [{"CIDEr": float(s)} for s in images]

    def meteor(self) -> _MetricResult:
        return self._java("METEOR", meteor)

    def spice(self) -> _MetricResult:
        return self._java("SPICE", spice)

    def _java(self, name: str, function: Callable[..., tuple[float, list[float]]]) -> _MetricResult:
        corpus, images = function(self.hyps, self.refs)
        return {name: corpus}, [{name: s} for s in images]


def _check_same_ids(predictions: Mapping, references: Mapping) -> None:
    if predictions.keys() != references.keys():
        missing = list(references.keys() - predictions.keys())[:5]
        extra = list(predictions.keys() - references.keys())[:5]
        raise ValueError(f"predictions and references must have the same ids (missing predictions for "
                         f"{missing}, no references for {extra})")


def bootstrap_ci(per_item_values: Mapping[object, float] | Sequence[float], n: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean, resampling items with replacement.

    For CIDEr pass the per-image CIDEr values: they were computed with document frequencies from the full
    evaluated set, which the resampling keeps fixed (it does not recompute df per resample).
    """
    values = np.asarray(list(per_item_values.values()) if isinstance(per_item_values, Mapping)
                        else per_item_values, np.float64)
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
