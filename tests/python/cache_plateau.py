"""A bounded LRU cache under a busy service: no leak, but a type whose live count climbs
and then stays put. After `ready` it waits DELAY seconds (default 3, so that leakscope has
attached and sees the cache being born), fills an OrderedDict with BOUND (5000) instances of
`Entry` over about 2 s, then keeps it at its bound: about RATE (100) times a second it evicts
the least recently used entry and inserts a new one, and touches a recent one (a hit). Fill
and replacement go through the same call (CALLS-PUT, then INSERT-SITE in `put`), so the
entries have one allocation site. Around it, the churn of overhead_churn.py (over a million
class instances a second, plus dicts, tuples, floats, ints) keeps the full tracing cost far
beyond a 10% budget. Nothing else survives. Prints `cache=N t=S` about once a second.
Runs until killed.

An entry lives BOUND / RATE = 50 s: born since attach, a 50 s trace sees the cache's live
count climb during the fill and then stay flat (the fill's entries are the ones evicted).
"""
import sys, time, zlib
from collections import OrderedDict
from dataclasses import dataclass

DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
BOUND = 5000
FILL_S = 2.0
RATE = 100.0
N = 500
BLOB = bytes(3 << 20)


class Entry:
    def __init__(self, key, value):
        self.key = key
        self.value = value


@dataclass
class Point:
    x: int
    y: float


class Node:
    __slots__ = ("key", "next")

    def __init__(self, key, next):
        self.key = key
        self.next = next


class Event:
    def __init__(self, kind, payload):
        self.kind = kind
        self.payload = payload


def churn_points(n):
    total = 0.0
    for i in range(n):
        p = Point(i, 0.5)  # CHURN-POINT
        total += p.y
    return total


def churn_nodes(n):
    head = None
    for i in range(n):
        head = Node(i, head)  # CHURN-NODE
    return head.key


def churn_events(n):
    seen = 0
    for i in range(n):
        e = Event("tick", {"i": i})  # CHURN-EVENT
        seen ^= e.payload["i"]
    return seen


cache = OrderedDict()
next_key = 0


def put():
    global next_key
    key = next_key
    next_key += 1
    cache[key] = Entry(key, f"value {key}")  # INSERT-SITE


def main():
    print("ready", flush=True)
    start = time.monotonic()
    fill_at = start + DELAY
    full_at = fill_at + FILL_S
    puts = 0
    next_print = start + 1.0
    while True:
        churn_points(N)
        churn_nodes(N)
        churn_events(N)
        zlib.crc32(BLOB)
        now = time.monotonic()
        if now < full_at:
            due = max(0, int((now - fill_at) * BOUND / FILL_S))
        else:
            due = BOUND + int((now - full_at) * RATE)
        # one call site for the fill and the replacements: one allocation site whose live
        # count is flat once the cache is full
        while puts < due:
            if len(cache) >= BOUND:
                cache.popitem(last=False)  # evict the least recently used
            put()  # CALLS-PUT
            puts += 1
            hit = next_key - 50
            if hit in cache:
                cache.move_to_end(hit)
        if now >= next_print:
            print(f"cache={len(cache)} t={now - start:.3f}", flush=True)
            next_print = now + 1.0


main()
