"""The eval probes: held-out statements cut before their answer (generalisation) and the trained facts cut the
same way (recall)."""

import random
import re
from itertools import zip_longest

from data_process.synth.families import FACT_TABLES, FAMILIES, PROBE_FAMILIES
from data_process.synth.heldout import split_of
from data_process.synth.tables import ANSWER_PREFIX


def _answer_given(prompt, answer):
    """Whether the answer already stands in the prompt as a whole word, as in "0 plus 5 equals" -> "5"."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", prompt) is not None


def _probe(family, item):
    prompt, answer = item.cloze
    return {"family": family, "lang": item.lang, "prompt": prompt, "answer": answer, "key": item.key}


def _family_probes(rng, family, lang, quota, split):
    """Up to `quota` distinct probes of one family and language in a held-out split; mul and unit run out at a few
    dozen."""
    make = FAMILIES[family]
    probes = {}
    for _ in range(100 * quota):
        if len(probes) == quota:
            break
        item = make(rng, lang)
        prompt, answer = item.cloze
        if split_of(item.key) == split and (family == "compare" or not _answer_given(prompt, answer)):
            probes.setdefault(prompt, _probe(family, item))
    return list(probes.values())


def completion_probes(count, seed=0, split="eval"):
    """`count` statements of a held-out split (eval or dev) cut right before their answer, shared by family and
    language and interleaved.

    The whole answer is scored. Items whose answer already stands in the prompt are skipped, except comparisons:
    there both numbers are given, in random order, and the model must choose.
    """
    rng = random.Random(f"completion:{seed}:{split}")
    slots = [(family, lang) for family in PROBE_FAMILIES for lang in ANSWER_PREFIX]
    groups = []
    for i, (family, lang) in enumerate(slots):
        quota = (count - sum(map(len, groups))) // (len(slots) - i)
        groups.append(_family_probes(rng, family, lang, quota, split))
    return [probe for row in zip_longest(*groups) for probe in row if probe]


def trained_fact_probes():
    """Seen data on purpose: every trained fact row's pretraining statement, cut before its answer, for recall."""
    rng = random.Random(0)  # picks question phrasings and wrong answers, which probes do not use
    probes = []
    for family, (rows, make) in FACT_TABLES.items():
        for row in rows:
            for lang in ANSWER_PREFIX:
                item = make(rng, lang, row)
                if split_of(item.key) == "train":
                    probes.append(_probe(family, item))
    return probes
