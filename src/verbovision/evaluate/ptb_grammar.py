"""The Stanford CoreNLP 3.4.1 PTBLexer grammar (options -preserveLines -lowerCase, ptb3Escaping defaults) as regexes.

The rules re-implement the 3.4.1 JFlex grammar: longest match, the earlier rule wins ties, trailing context counts
in the match length (``lex_at``). Its word lists were probed entry by entry against the jar.

Known differences from the jar: letters are Unicode category L* (plus the marks the grammar lists); Java 17's and
Python's Unicode tables may disagree on recently added characters. Characters outside the Basic Multilingual Plane
(emoji) are deleted, as Java deletes their surrogate halves. Constructs rarer than anything probed (SGML with
unbalanced quotes, odd URLs) may tokenize differently from the jar; tests/test_metrics.py compares both on the real
captions at hand and a few hundred tricky strings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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
ABBREV1_WORDS = (
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
    "|Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kan|Kans|Ky|[L]a|[M]ass|Md|Mich|Minn"
    "|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wis|Wisc|Wyo"
    "|Inc|Co|Cos|Corp|Pt[y]|Pt[y]s|Pt[e]|Pt[e]s|Ppt[y]|Ppt[y]s|Ppt[e]|Ppt[e]s|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ"
    "|Intl|Sys|tel|est|ext|sq|Jr|Sr|Bros|Ed.D|Ph.D|Blvd|Rd|Esq|etc|al|seq|Bldg")
# ABBREV4: titles and the like; "Mr." is one token whatever follows.
ABBREV4_WORDS = (
    "Mr|Mrs|Ms|[M]iss|Dr|Drs|Prof|Profs|Sen|Sens|Rep|Reps|Atty|Attys|Lt|Col|Gen|Messrs|Gov|Govs|Adm|Rev|Maj"
    "|Sgt|Cpl|Pvt|Capt|St|Ste|Ave|Pres|Lieut|Rt|Hon|Brig|Cmdr|Comdr|Pfc|Spc|Supt|Supts|Det|Mt|Ft|Adj|Adv|Asst"
    "|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc|vs|Alex|Wm|Jos|Cie|a.k.a|cf|TREAS|Ph|Invt|Elec|Natl|M[f]g|M[t]g|Dept")
# ABBREV3: abbreviations only before a number ("fig. 3").
ABBREV3_WORDS = "ca|fig|figs|prop|no|nos|art|bldg|pp|op"
# After "U.S." (or "I.") these capitalised words mean the period also ends a sentence (initial case-sensitive).
_SENTENCE_STARTERS = "|".join(w[0] + f"(?i:{re.escape(w[1:])})" for w in sorted(
    ("About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More "
     "Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This We When "
     "While What Yet You").split(), key=len, reverse=True))
_FILE_EXTENSIONS = _words("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3"
                          "|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
_ABBREV1, _ABBREV4, _ABBREV3 = _words(ABBREV1_WORDS), _words(ABBREV4_WORDS), _words(ABBREV3_WORDS)

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


def lex_at(text: str, pos: int) -> tuple[list[str], int]:
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
