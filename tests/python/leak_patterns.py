"""Leaks the growth rule used to miss (issue #9, item 5). Prints `ready`, then runs until
killed, with some churn on the side (dicts, tuples, strings that die at once).

    python leak_patterns.py bursty RATE ON OFF
        leaks RATE `Burst` objects a second (from BURST-SITE) for ON seconds, then nothing
        for OFF seconds, over and over: between bursts the live count stays put.
    python leak_patterns.py hot KIND KEEP
        parses about 25,000 lines a second, each making a token on HOT-LINE (KIND `str`: a
        string sliced from the line; `obj`: a `Token` instance), and keeps KEEP of those
        tokens a second in a list: a leak of well under 0.1% of the line's births.
"""
import sys, time


class Burst:
    def __init__(self, n):
        self.n = n


class Token:
    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


KEPT = []


def churn():
    tmp = [{"k": i, "v": (i, str(i))} for i in range(20)]
    del tmp


def bursty(rate, on, off):
    start = time.monotonic()
    leaked = 0.0  # seconds of leaking so far
    last = start
    while True:
        now = time.monotonic()
        if (now - start) % (on + off) < on:
            leaked += now - last
        last = now
        while len(KEPT) < int(leaked * rate):
            KEPT.append(Burst(len(KEPT)))  # BURST-SITE
        churn()
        time.sleep(0.005)


LINES = [f"key{i:05d}=value{i},flag={i % 7}" for i in range(1000)]


def parse(line, kind):
    if kind == "str":
        return line[: line.index("=")]  # HOT-LINE
    return Token(line[: line.index("=")])  # HOT-LINE-OBJ


def hot(kind, keep):
    start = time.monotonic()
    i = 0
    while True:
        tick = time.monotonic()
        for _ in range(250):
            tok = parse(LINES[i % 1000], kind)
            i += 1
            if len(KEPT) < int((tick - start) * keep):
                KEPT.append(tok)
        churn()
        rest = 0.01 - (time.monotonic() - tick)
        if rest > 0:
            time.sleep(rest)


print("ready", flush=True)
if sys.argv[1] == "bursty":
    bursty(float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
else:
    hot(sys.argv[2], float(sys.argv[3]))
