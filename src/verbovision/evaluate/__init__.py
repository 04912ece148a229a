"""Evaluation: metrics numerically identical to the official toolkits (pure Python + numpy), scoring a predictions
file (`verbo score`, scoring.py) and evaluating a model (`verbo eval`, run.py).

The metrics' entry points: ``captions.score_captions`` (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, optionally SPICE),
``vqa.score_vqa`` (VQAv2 and TextVQA accuracy, exact match, numbers, multiple-choice letters), ``error_rates.wer`` /
``cer``; ``metrics`` names what a user may ask for and scores it with ``bootstrap_ci``. Each metric module says what
it matches bit for bit and where it knowingly differs; tests/test_metrics.py and benchmarks/metrics_bench.py check it.
"""
