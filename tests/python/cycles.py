"""Garbage only the cyclic collector frees: about RATE (default 2000) pairs of `Node`s a
second, each pointing at the other (CYCLE-SITE), dropped at once; the collector reclaims
them when it runs. Beside them, `Plain` objects that die by reference count (PLAIN-SITE)
and no leak. Prints `ready`, then runs until killed."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 2000.0


class Node:
    def __init__(self):
        self.other = None


class Plain:
    def __init__(self, n):
        self.n = n


def make_pair():
    a = Node()  # CYCLE-SITE
    b = Node()  # CYCLE-SITE-B
    a.other, b.other = b, a


start = time.monotonic()
made = 0
print("ready", flush=True)
while True:
    due = int((time.monotonic() - start) * RATE)
    while made < due:
        make_pair()
        p = Plain(made)  # PLAIN-SITE
        made += 1
    time.sleep(0.005)
