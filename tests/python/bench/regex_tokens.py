"""Bench workload: tokenizing text with a regular expression into a collections.Counter,
N passes over a fixed generated text. See _harness.py for the protocol."""
import random
import re
from collections import Counter

from _harness import run

_rng = random.Random(8)
_WORDS = [
    "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(2, 9)))
    for _ in range(3000)
]
LINES = [
    " ".join(_rng.choice(_WORDS) for _ in range(12)) + _rng.choice([".", ",", "!", "?", ";"])
    for _ in range(2000)
]
TOKEN = re.compile(r"[A-Za-z]+|\d+|[^\w\s]")


def work(n, tick):
    counts = Counter()
    for _ in range(n):
        for i, line in enumerate(LINES):
            counts.update(tok.lower() for tok in TOKEN.findall(line))
            if i % 100 == 0:
                tick()
    return counts.most_common(3)


run(work, 40)
