"""lm-eval filter for the balora arithmetic task: balora's own answer extraction.

Used by arithmetic.yaml's "balora-extract" filter (``!function utils.balora_extract``); needs balora importable
in the lm-eval environment (``pip install balora`` or ``PYTHONPATH=src``). The other two filters of the task are
lm-eval's own regexes (the gsm8k task's), so one lm-eval run scores the same generations three ways.
"""

from balora.evaluation.math_answers import extract_gsm8k_answer


def balora_extract(resps, docs):  # noqa: ANN001, ANN201 - lm-eval's filter signature
    """``extract_gsm8k_answer`` on every response ("[invalid]" when it finds no number, as lm-eval's regex does)."""
    return [[extract_gsm8k_answer(r) or "[invalid]" for r in rs] for rs in resps]
