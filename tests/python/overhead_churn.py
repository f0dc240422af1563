"""A busy service for budgeted tracing: well over a million short-lived objects a second,
churned at three sites (the lines marked CHURN-POINT, CHURN-NODE, CHURN-EVENT), most of them
instances of its own classes (the only objects Debian's static python3.11 lets the probes
see), plus dicts, tuples, floats and ints; and a leak of RATE (default 100) instances of
`Leak` a second into a global list, at the line marked LEAK-SITE, paced by the clock in the
same thread. Nothing else survives. Prints `iterations=N t=S` about once a second (N since
start, S seconds since start). Runs until killed.

`--measure K`: after `ready`, wait for SIGUSR1, run exactly K iterations, print
`done iterations=K`, then idle (allocating nothing) until killed: traced around that, the
births in the final report divided by K are the births per iteration.

Measured here (2-core VM shared with other work, 2026-12-01): untraced allocations per
second = births per iteration, counted by
  leakscope trace --pid P --json --no-stacks --no-census --stats
around `--measure 500` (all 500 iterations inside the trace, then Ctrl-C), times untraced
iterations per second (the `iterations=` lines, t=1..end of a 9-12 s run):
  pyenv 3.11.7 (shared, sees all objects):     4,870 births/iteration x 1,100-1,430 it/s
                                               = 5.4-7.0M objects/s (per iteration 1,500
                                               class instances, 1,500 argument tuples)
  Debian /usr/bin/python3.11 (classes only):   1,500 births/iteration x   960-1,500 it/s
                                               = 1.4-2.25M class instances/s
(the lower ends with the machine's load average at 4; on Debian `PyObject_GC_Del` hits
equal the births: every churned instance dies within its iteration). Traced exactly with
stacks, the loop runs 8x (Debian) to 17x (pyenv) slower.
"""
import signal, sys, time, zlib
from dataclasses import dataclass

RATE = 100.0
MEASURE = None
args = sys.argv[1:]
if args and args[0] == "--measure":
    MEASURE = int(args[1])
elif args:
    RATE = float(args[0])

N = 500  # objects of each churn class per site and iteration
# Work that allocates nothing the probes see (a C checksum over a constant buffer), about
# 0.8 ms of an iteration: a service does more than allocate, and without it the churn runs
# at 9M class instances a second on Debian's build, far beyond any real service.
BLOB = bytes(3 << 20)


@dataclass
class Point:
    x: float
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


class Leak:
    def __init__(self):
        self.tag = "leaked"  # a shared constant: the instance is the only new object


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
    return head.key  # the chain dies on return


def churn_events(n):
    seen = 0
    for i in range(n):
        e = Event("tick", {"i": i})  # CHURN-EVENT
        seen ^= e.payload["i"]
    return seen


kept = []


def step():
    churn_points(N)
    churn_nodes(N)
    churn_events(N)
    return zlib.crc32(BLOB)


def main():
    start = time.monotonic()
    iterations = 0
    next_print = start + 1.0
    while True:
        step()
        due = int((time.monotonic() - start) * RATE)
        while len(kept) < due:
            kept.append(Leak())  # LEAK-SITE
        iterations += 1
        now = time.monotonic()
        if now >= next_print:
            print(f"iterations={iterations} t={now - start:.3f}", flush=True)
            next_print = now + 1.0


def measure(k):
    go = []
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    print("ready", flush=True)
    while not go:
        time.sleep(0.01)
    for _ in range(k):
        step()
    print(f"done iterations={k}", flush=True)
    while True:
        time.sleep(1)


if MEASURE is not None:
    measure(MEASURE)
else:
    print("ready", flush=True)
    main()
