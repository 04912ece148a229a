"""The evaluate/ metrics against the official toolkits: pycocoevalcap 1.2 (and its Java tokenizer), vqaEval.py."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from verbovision.evaluate import java_scorers
from verbovision.evaluate.answers import exact_match, extract_choice, extract_number, numeric_match
from verbovision.evaluate.bleu import bleu
from verbovision.evaluate.captions import score_captions
from verbovision.evaluate.cider import CiderD
from verbovision.evaluate.error_rates import cer, wer
from verbovision.evaluate.metrics import bootstrap_ci, score
from verbovision.evaluate.ptb import ptb_raw_tokens, ptb_tokenize, tokenize_captions
from verbovision.evaluate.rouge import rouge_l
from verbovision.evaluate.vqa import (normalize_textvqa_answer, normalize_vqa_answer, score_vqa, textvqa_accuracy,
                                      vqa_accuracy)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO = SHARED / "reference" / "coco-caption"
GLLAVA = SHARED / "reference" / "formats" / "gllava_geo170k"
HAS_JAVA = shutil.which("java") is not None

# Full-precision values from coco-caption/EXPECTED_VALUES.txt (pycocoevalcap 1.2, Java 17, PTB tokenizer on).
FAKECAP_EXPECTED = {"Bleu_1": 0.5793995754573356, "Bleu_2": 0.40439129741018104, "Bleu_3": 0.2785363856619147,
                    "Bleu_4": 0.1908290437674253, "ROUGE_L": 0.39625269357570847, "CIDEr": 0.5998952026835711}
# Without re-tokenizing the stored references: one of image 377715's ends in "bat.", which the tokenizer fixes.
FAKECAP_CIDER_UNTOKENIZED = 0.5997905185184199


def reference_dir(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"../shared/reference not present: {path}")
    return path


def read_json(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def fakecap() -> tuple[dict[int, str], dict[int, list[str]]]:
    """The official COCO example: 1000 generated captions, references in the annotation file's image order."""
    coco = reference_dir(COCO)
    refs = read_json(coco / "captions_val2014_fakecap_refs_tokenized.json")
    by_image: dict[int, list[str]] = {}
    for annotation in refs["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    references = {image["id"]: by_image[image["id"]] for image in refs["images"]}
    results = read_json(coco / "captions_val2014_fakecap_results.json")
    return {r["image_id"]: r["caption"] for r in results}, references


# --- official COCO numbers ------------------------------------------------------------------------------------

def test_expected_constants_are_the_published_ones():
    text = (reference_dir(COCO) / "EXPECTED_VALUES.txt").read_text()
    for value in [*FAKECAP_EXPECTED.values(), FAKECAP_CIDER_UNTOKENIZED]:
        assert repr(value) in text


def test_official_coco_example_with_tokenizer(fakecap):
    predictions, references = fakecap
    scores = score_captions(predictions, references, metrics=("bleu", "rouge_l", "cider"))
    assert scores.corpus == FAKECAP_EXPECTED
    assert scores.skipped == {}


def test_official_coco_example_per_image_without_tokenizer(fakecap):
    predictions, references = fakecap
    expected = read_json(COCO / "fakecap_scores_per_image_pycocoevalcap.json")
    scores = score_captions(predictions, references, metrics=("bleu", "rouge_l", "cider"), tokenize=False)
    assert scores.corpus["CIDEr"] == FAKECAP_CIDER_UNTOKENIZED == expected["corpus"]["CIDEr"]
    names = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    assert {k: scores.corpus[k] for k in names} == {k: expected["corpus"][k] for k in names}
    for image, values in expected["per_image"].items():
        assert {k: scores.per_image[int(image)][k] for k in names} == {k: values[k] for k in names}, image


def test_raw_debug_fixture_with_tokenizer():
    coco = reference_dir(COCO)
    references = read_json(coco / "debug_refs_raw_tylin_d5cf296.json")
    predictions = {k: v[0] for k, v in read_json(coco / "debug_hypo_raw_tylin_d5cf296.json").items()}
    expected = read_json(coco / "debug_fixture_expected_pycocoevalcap.json")
    assert tokenize_captions(references) == expected["tokenized_refs"]
    assert ptb_tokenize(list(predictions.values())) == [v[0] for v in expected["tokenized_hyp"].values()]

    scores = score_captions(predictions, references)  # bleu, meteor, rouge_l, cider
    corpus = dict(expected["corpus"])
    if HAS_JAVA:
        assert scores.skipped == {}
    else:
        corpus.pop("METEOR")
        assert "java not found" in scores.skipped["meteor"]
    assert scores.corpus == corpus
    assert {k: v["CIDEr"] for k, v in scores.per_image.items()} == expected["per_image_CIDEr"]


# --- parity with pycocoevalcap's scorers on generated data ----------------------------------------------------

def generated_captions(seed: int, n_images: int) -> tuple[list[str], list[list[str]]]:
    """Random captions over a small vocabulary (so n-grams repeat), with empty and 64+-token hypotheses and
    sloppy whitespace, which pycocoevalcap splits differently for ROUGE (split(" ")) and BLEU/CIDEr (split())."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(12)]

    def sentence(length: int) -> str:
        text = " ".join(rng.choice(vocab) for _ in range(length))
        if rng.random() < 0.05:
            text = rng.choice(["  ", "\t", " \u00a0", ""]).join(text.split(" ")) + rng.choice(["", " "])
        return text

    hyps = [sentence(rng.choice([0, 1, 2, 4, 7, 10, 15, 70])) for _ in range(n_images)]
    refs = [[sentence(rng.randint(1, 16)) for _ in range(rng.randint(1, 5))] for _ in range(n_images)]
    return hyps, refs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parity_with_pycocoevalcap_scorers(seed):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = generated_captions(seed, 300)
    gts, res = dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)}
    coco_bleu, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_images = Rouge().compute_score(gts, res)
    cider, cider_images = Cider().compute_score(gts, res)

    ours_bleu, ours_bleu_images = bleu(hyps, refs)
    assert ours_bleu == coco_bleu
    assert ours_bleu_images == [list(s) for s in zip(*bleu_images)]
    assert rouge_l(hyps, refs)[0] == rouge
    assert np.array_equal(rouge_l(hyps, refs)[1], rouge_images)
    assert np.array_equal(CiderD().score(hyps, refs), cider_images)
    scores = score_captions(dict(enumerate(hyps)), gts, metrics=("bleu", "rouge_l", "cider"), tokenize=False)
    assert scores.corpus == {**{f"Bleu_{k + 1}": s for k, s in enumerate(coco_bleu)}, "ROUGE_L": rouge, "CIDEr": cider}


def test_cider_with_fixed_document_frequencies():
    hyps, refs = generated_captions(4, 200)
    from_set = CiderD().score(hyps, refs)
    # df taken once from the same references is the df pycocoevalcap takes from the scored set
    fixed = CiderD(refs)
    assert np.array_equal(fixed.score(hyps, refs), from_set)
    # with df fixed, a hypothesis scores the same whatever else is in the batch (as an SCST reward needs)
    batch = fixed.score([hyps[5], hyps[7], hyps[5]], [refs[5], refs[5], refs[5]])
    assert batch[0] == batch[2] == fixed.score([hyps[5]], [refs[5]])[0]
    # pycocoevalcap's own df: one image alone gets idf 0 for every n-gram, hence CIDEr 0
    assert CiderD().score([hyps[5]], [refs[5]])[0] == 0.0


def test_score_captions_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same ids"):
        score_captions({1: "a dog"}, {2: ["a dog"]})
    with pytest.raises(ValueError, match="at least one reference"):
        score_captions({1: "a dog"}, {1: []}, metrics=("bleu",))
    with pytest.raises(ValueError, match="unknown caption metrics"):
        score_captions({1: "a dog"}, {1: ["a dog"]}, metrics=("bleurt",))
    with pytest.raises(TypeError, match="one caption string"):
        score_captions({1: ["a dog"]}, {1: ["a dog"]}, metrics=("bleu",))
    with pytest.raises(ValueError, match="nothing to score"):
        score_captions({}, {})


def test_java_metrics_are_skipped_with_a_reason(monkeypatch):
    monkeypatch.setattr(java_scorers.shutil, "which", lambda name: None)
    scores = score_captions({1: "a dog runs"}, {1: ["a dog is running"]}, metrics=("bleu", "meteor", "spice"))
    assert scores.skipped == {name.lower(): f"java not found: {name} runs the official Java program; install a Java "
                                            "runtime (e.g. OpenJDK: apt install default-jre) to compute it"
                              for name in ("METEOR", "SPICE")}
    assert set(scores.corpus) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"}


# --- PTB tokenizer --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("caption, tokens", [
    ("A dog (brown) [big] {x} sits.", "a dog -lrb- brown -rrb- -lsb- big -rsb- -lcb- x -rcb- sits"),
    ("Don't, can't, won't; I'm he's they're", "do n't ca n't wo n't i 'm he 's they 're"),
    ('He said "hello" and `quote\'', "he said hello and quote"),
    ("The U.S. is big. Mr. Smith etc. e.g.", "the u.s. is big mr. smith etc. e.g."),
    ("1/2 1 1/2 3.5 1,000 $5 £3 100% 10:30am", "1/2 1\u00a01/2 3.5 1,000 $ 5 # 3 100 % 10:30 am"),
    ("black-and-white x/y a--b a---b a-----b", "black-and-white x/y a b a b a ----- b"),
    ("cannot gonna 'tis 'twas y'all rock'n'roll o'clock", "can not gon na 't is 't was y' all rock 'n' roll o'clock"),
    ("Café Zürich ½ … – ‘x’ “y”", "café zürich 1/2 x y"),
    ("smile :) ^_^ www.x.com foo@bar.com #tag", "smile :-rrb- ^_^ www.x.com foo@bar.com #tag"),
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
])
def test_ptb_tokenize_hand_checked(caption, tokens):
    assert ptb_tokenize([caption]) == [tokens]


def test_ptb_tokenize_reads_the_next_caption_like_java():
    # Java lexes the captions as one file: "A." before a capitalised sentence starter loses its period
    assert ptb_tokenize(["a letter A.", "A dog"]) == ["a letter a", "a dog"]
    assert ptb_tokenize(["a letter A.", "the dog"]) == ["a letter a.", "the dog"]
    assert ptb_raw_tokens("a letter A.") == ["a", "letter", "A."]


def tricky_strings() -> list[str]:
    """A few hundred captions mixing the constructs the PTB grammar treats specially."""
    atoms = ("a A I The dog DOG Mr. Dr. St. etc. e.g. U.S. U.S x. A. No. fig. ca. vs. Jan. Inc. Calif. mass. 5 3.5 "
             "1,000 .5 -3 1/2 3/4 10:30 555-1234 (555) 2014-08-27 '90s don't can't I'm he's Tom's dogs' cannot "
             "gonna 'tis 'twas y'all o'clock cont'd. \" 'q' `` '' ( ) [ ] { } < > << - -- --- ... . , ; : ! ? "
             "& &amp; AT&T $ £ € % # @user #tag * / \\ | ~ ^ _ = + c++ http://x.com/a www.x.com x.com a@b.c "
             "black-and-white x-ray T-shirt 3-year-old mid-1990s café naïve ½ ° – — … ‘ ’ “ ” « » :) ;-) ^_^ "
             "<b> </b> file.jpg a.b hello.world ΣΑΣ").split(" ")
    atoms += ["1 1/2", "soft\u00adhyphen", "non\u00a0breaking"]
    rng = random.Random(0)
    separators = [" ", " ", " ", "", ". ", ", ", "-", "'", '"', "\t"]
    strings = ["".join(rng.choice(atoms) + rng.choice(separators) for _ in range(rng.randint(1, 8))).strip()
               for _ in range(400)]
    return strings + ["", "   ", "..."]


@pytest.mark.skipif(not HAS_JAVA, reason="java not found: the Java PTBTokenizer is the reference")
def test_ptb_tokenize_matches_java_on_tricky_strings():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    strings = tricky_strings()
    java = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(strings)})
    ours = ptb_tokenize(strings)
    mismatches = [(s, o, java[i][0]) for i, (s, o) in enumerate(zip(strings, ours)) if o != java[i][0]]
    assert mismatches == []


@pytest.mark.skipif(not HAS_JAVA, reason="java not found: the Java PTBTokenizer is the reference")
def test_ptb_tokenize_matches_java_on_real_captions():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    coco = reference_dir(COCO)
    captions = [c for caps in read_json(coco / "debug_refs_raw_tylin_d5cf296.json").values() for c in caps]
    captions += [r["caption"] for r in read_json(coco / "captions_val2014_fakecap_results.json")]
    if GLLAVA.exists():  # long model outputs with formulas and degrees
        outputs = GLLAVA / "gllava_model_outputs_Gllava-test_merged.head3.jsonl"
        captions += [json.loads(line)["text"] for line in outputs.read_text().splitlines()]
    java = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert ptb_tokenize(captions) == [java[i][0] for i in range(len(captions))]


# --- VQA ------------------------------------------------------------------------------------------------------
# Expected values derived by hand from vqaEval.py (GT-Vision-Lab/VQA), which is Python 2 code.

@pytest.mark.parametrize("answer, normalized", [
    ("Two", "2"), ("a dog", "dog"), ("The Dog.", "dog"), ("dont", "don't"), ("yes.", "yes"), ("Yes!", "yes"),
    ("t-shirt", "t shirt"), ("1,000", "1000"), ("3.5", "3.5"), ("  ten  apples ", "10 apples"), ("none", "0"),
    ("\tred\ncar ", "red car"),
    ("10 - 12", "10 12"),  # " -" is in the text: "-" is deleted, not made a space
    ("red,blue", "red blue"), ("red, blue", "red blue"),
    ("3,4", "34"), ("1,000 (approx)", "1000 approx"),  # a digit-comma-digit anywhere deletes every punctuation mark
    ("5.", "5"), ("1.5.", "1.5"),  # a period not followed by a digit goes
    ("." * 40, "." * 8),  # re.UNICODE passed as sub()'s count: 32 periods at most
    ("Im", "im"), ("somebody'd", "somebodyd"),  # contractions are looked up after lowercasing; odd entries kept
    ("\u0663.\u0665", "\u0663\u0665"),  # Python 2's "\d" is 0-9: a period before an Arabic-Indic digit goes
    ("\u0130STANBUL", "istanbul"), ("\u039f\u0394\u039f\u03a3", "\u03bf\u03b4\u03bf\u03c3"),  # Python 2's lower()
    ("\u13a0", "\u13a0"),  # Unicode 5.2 (Python 2.7) gave Cherokee no lowercase
    ("ca\u180ebin", "ca bin"),  # U+180E was whitespace in Unicode 5.2
])
def test_normalize_vqa_answer(answer, normalized):
    assert normalize_vqa_answer(answer) == normalized


OTHERS = ["cat", "cow", "red", "blue", "left", "right", "up", "down"]


def test_vqa_accuracy_compares_raw_strings_when_the_human_answers_agree():
    # vqaEval.py normalises only when the 10 answers are not all identical; otherwise it compares the prediction,
    # tabs and newlines made spaces and stripped, with the raw answer.
    assert vqa_accuracy("four.", ["4"] * 10) == 0.0
    assert vqa_accuracy("giraffe", ["Giraffe"] * 10) == 0.0
    assert vqa_accuracy(" Giraffe\n", ["Giraffe"] * 10) == 1.0
    assert vqa_accuracy("4", ["4 "] * 10) == 1.0  # the answers are stripped before the set is taken
    # one answer differing makes them normalise: "four." -> "4" matches 9 of 10, and any 9 leave at least 3
    assert vqa_accuracy("four.", ["4"] * 9 + ["5"]) == 1.0


def test_vqa_accuracy_leave_one_out_in_annotator_order():
    # 2 of 10 answers match. Leaving out one of the 2 leaves 1 match: 1/3; leaving out one of the other 8 leaves
    # 2 matches: 2/3. vqaEval.py sums these floats in annotator order, then divides by 10:
    assert vqa_accuracy("Two", ["2", "two", *OTHERS]) == 0.6  # 1/3 + 1/3 + 8 x 2/3
    assert vqa_accuracy("Two", [*OTHERS, "2", "two"]) == 0.5999999999999999  # 8 x 2/3 + 1/3 + 1/3
    # 3 matches: 3 x 2/3 + 7 x 1 = 9 -> 0.9; 4 or more always leave 3: 1.0; none: 0.0
    assert vqa_accuracy("2", ["2", "2", "2", *OTHERS[:7]]) == 0.9
    assert vqa_accuracy("2", ["2"] * 4 + OTHERS[:6]) == 1.0
    assert vqa_accuracy("2", OTHERS + ["3", "4"]) == 0.0
    # "dont" -> "don't" for the prediction; the answers keep theirs (the apostrophe is not in the punctuation list)
    assert vqa_accuracy("dont", ["don't"] * 3 + OTHERS[:7]) == 0.9


def test_vqa_accuracy_with_one_answer_is_always_zero():
    # leaving out the only annotator leaves nothing to match
    assert vqa_accuracy("dog", ["dog"]) == 0.0
    assert vqa_accuracy("dog", "dog") == 0.0


def test_textvqa_accuracy_always_normalises():
    assert normalize_textvqa_answer("Nokia's Phone, 1,000?") == "nokia 's phone 1000"
    assert textvqa_accuracy("giraffe", ["Giraffe"] * 10) == 1.0  # lowercased first, unlike vqa
    assert textvqa_accuracy("COCA COLA.", ["coca cola"] * 2 + ["coke"] * 8) == 0.6  # 1/3 + 1/3 + 8 x 2/3


def test_score_vqa_breakdowns_and_official_percentages():
    answers = {"q1": ["2"] * 3 + ["3"] * 7, "q2": ["yes"] * 10, "q3": ["red"] * 5 + ["blue"] * 5}
    predictions = {"q3": "Blue", "q1": "two", "q2": "no"}
    types = {"answer_type": {"q1": "number", "q2": "yes/no", "q3": "other"},
             "question_type": {"q1": "how many", "q2": "is the", "q3": "how many"}}
    scores = score_vqa(predictions, answers, "vqa", types)
    assert list(scores.per_item) == ["q1", "q2", "q3"]  # vqaEval.py's order: the annotations'
    assert scores.per_item == {"q1": 0.9, "q2": 0.0, "q3": 1.0}
    assert scores.mean == 0.6333333333333333  # (0.9 + 0.0 + 1.0) / 3
    assert scores.by_type == {"answer_type": {"number": 0.9, "other": 1.0, "yes/no": 0.0},
                              "question_type": {"how many": 0.95, "is the": 0.0}}
    # round(100 * sum / count, 2): 100 * 1.9 / 3 = 63.333333333333336 -> 63.33
    assert scores.official == {"overall": 63.33, "answer_type": {"number": 90.0, "other": 100.0, "yes/no": 0.0},
                               "question_type": {"how many": 95.0, "is the": 0.0}}
    with pytest.raises(ValueError, match="no answer_type"):
        score_vqa(predictions, answers, "vqa", {"answer_type": {"q1": "number"}})


def test_vqa_official_percentages_round_half_away_from_zero():
    # 1 right of 160: 100 * 1 / 160 = 0.625 exactly. vqaEval.py runs on Python 2, whose round() gives 0.63
    # (Python 3's round() would give 0.62).
    answers = {i: ["4"] * 10 for i in range(160)}
    scores = score_vqa({i: "4" if i == 0 else "5" for i in range(160)}, answers)
    assert scores.mean == 0.00625 and scores.official == {"overall": 0.63}


def test_exact_numeric_and_choice_matching():
    assert exact_match("  The   Cat. ", ["the cat"]) == 1.0
    assert exact_match("the cat sat", "the cat") == 0.0
    assert extract_number("... so angle C is 70°") == 70
    assert extract_number("Answer: 70") == 70
    assert extract_number("it drops to -5.5 degrees") == -5.5
    assert extract_number("about 1,000,000 people") == 1_000_000
    assert extract_number("the ratio is 3/4.") == 0.75
    assert extract_number("pages 3-5") == 5
    assert extract_number("no digits here") is None
    assert numeric_match("so x = 70.00000001", "70") == 1.0
    assert numeric_match("so x = 70.001", "70") == 0.0
    assert extract_choice("Thus, the correct answer is option B.") == "B"
    assert extract_choice("Therefore, the answer is (C) 14.") == "C"
    assert extract_choice("(D)") == "D"
    assert extract_choice("So the answer is Because of this.") is None


def test_choice_extraction_on_real_gllava_outputs():
    gllava = reference_dir(GLLAVA)
    outputs = [json.loads(line) for line in
               (gllava / "gllava_model_outputs_Gllava-test_merged.head3.jsonl").read_text().splitlines()]
    answers = {json.loads(line)["question_id"]: json.loads(line)["text"] for line in
               (gllava / "gllava_geoqa_test_answers.head5.jsonl").read_text().splitlines()}
    assert [extract_choice(o["text"]) for o in outputs] == ["A", "C", "A"]
    scores = score_vqa({o["question_id"]: o["text"] for o in outputs},
                         {o["question_id"]: answers[o["question_id"]] for o in outputs}, kind="choice")
    assert scores.per_item == {0: 0.0, 1: 1.0, 2: 1.0}  # question 0's answer is D
    assert scores.mean == 2 / 3


def test_score_vqa_kinds_and_errors():
    predictions = {"q1": "Two dogs", "q2": "yes"}
    answers = {"q1": ["2 dogs"] * 4, "q2": ["no", "yes"]}
    # q1: the 4 answers agree, so "Two dogs" is compared raw and scores 0; q2: leaving out "no" leaves 1 match,
    # leaving out "yes" none: (1/3 + 0) / 2
    assert score_vqa(predictions, answers).per_item == {"q1": 0.0, "q2": 0.16666666666666666}
    assert score_vqa(predictions, answers, kind="textvqa").per_item == {"q1": 1.0, "q2": 0.16666666666666666}
    assert score_vqa(predictions, answers, kind="exact").mean == 0.5
    assert score_vqa({"q": "it is 2"}, {"q": "2.0"}, kind="numeric").mean == 1.0
    with pytest.raises(ValueError, match="unknown VQA metric"):
        score_vqa(predictions, answers, kind="bleu")
    with pytest.raises(ValueError, match="same ids"):
        score_vqa(predictions, {"q1": "2"})


# --- WER / CER and bootstrap -----------------------------------------------------------------------------------

def test_word_error_rate():
    # 3 deletions against a 6-word reference
    assert wer({1: "the cat sat"}, {1: "the cat sat on the mat"}).corpus == 0.5
    # one substitution in 3 words; the closest of several references is used
    assert wer({1: "the dog sat"}, {1: "the cat sat"}).corpus == 1 / 3
    assert wer({1: "the cat sat"}, {1: ["nothing alike here", "the cat sat"]}).corpus == 0.0
    # corpus level = total edits / total reference words: (1 + 0) / (2 + 8), not the mean of 0.5 and 0
    rates = wer({1: "a b", 2: "one two three four five six seven eight"},
                  {1: "a c", 2: "one two three four five six seven eight"})
    assert (rates.corpus, rates.per_item, rates.edits, rates.reference_length) == (0.1, {1: 0.5, 2: 0.0}, 1, 10)


def test_character_error_rate():
    # kitten -> sitting: 2 substitutions and 1 insertion over 7 reference characters
    assert cer({1: "kitten"}, {1: "sitting"}).corpus == 3 / 7
    assert cer({1: "a  b "}, {1: "a b"}).corpus == 0.0  # whitespace runs collapse


def test_bootstrap_ci():
    values = {i: float(i % 7) for i in range(200)}
    low, high = bootstrap_ci(values, n=500, seed=3)
    assert low < np.mean(list(values.values())) < high
    assert (low, high) == bootstrap_ci(list(values.values()), n=500, seed=3)
    assert bootstrap_ci([2.0] * 10) == (2.0, 2.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_only_metrics_that_are_means_over_items_get_an_interval():
    """Corpus BLEU is no mean of its items' BLEU, even where both are near zero (a model repeating one word: corpus
    BLEU-4 2e-13, its items' mean 7e-13), so it gets no interval, which need not contain it."""
    references = {i: [f"a {colour} circle and a small star"] for i, colour in enumerate(["red", "blue", "green"] * 2)}
    result = score({i: "small small small small small small" for i in references}, references,
                   ["bleu", "rouge_l", "exact_match"])
    assert 0 < result.values["Bleu_4"] < 1e-9
    assert "Bleu_4" not in result.intervals and {"ROUGE_L", "exact_match"} <= set(result.intervals)
