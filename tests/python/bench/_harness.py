"""The protocol every `cargo xtask bench` workload follows, and the paced leak.

    python <workload>.py N [--paced-leak SECONDS]

prints `ready`, waits for a line on stdin (so a tracer can attach first, and attaching is not
timed; see `wait_for_go`), runs the work of size N, prints the work's own wall time in seconds
(`time.perf_counter`, inside the process) and exits.

With `--paced-leak SECONDS` the work of size N is repeated until SECONDS have passed, and
while it runs `PacedLeak` objects are appended to `LEAKED`, 100 a second, from one line (the
one marked `paced-leak line`; the bench reads its number from this file), on the thread doing
the work: a leak the tracer has to find among the workload's own churn.
"""
import select
import sys
import time

LEAK_RATE = 100  # objects per second


class PacedLeak:
    """What --paced-leak leaks."""

    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n


LEAKED = []


class Pacer:
    """`tick()` leaks as many PacedLeak objects as are due since the start; the workloads call
    it often (about every millisecond of work), so the leak is smooth, not bursty."""

    def __init__(self, rate):
        self.rate = rate
        self.t0 = time.perf_counter()

    def tick(self):
        due = int((time.perf_counter() - self.t0) * self.rate)
        while len(LEAKED) < due:
            LEAKED.append(PacedLeak(len(LEAKED)))  # paced-leak line


def no_tick():
    pass


def wait_for_go():
    """Reads the `go` line, running Python code meanwhile: `memray attach` injects itself
    through gdb breakpoints on malloc and PyErr_CheckSignals and a pending call, which a
    process blocked in read() never reaches."""
    while not select.select([sys.stdin], [], [], 0.005)[0]:
        pass
    sys.stdin.readline()


def run(work, default_n):
    """`work(n, tick)` does the work of size n, calling `tick()` now and then."""
    args = sys.argv[1:]
    n = int(args[0]) if args and not args[0].startswith("-") else default_n
    paced = None
    if "--paced-leak" in args:
        paced = float(args[args.index("--paced-leak") + 1])
    print("ready", flush=True)
    wait_for_go()
    t0 = time.perf_counter()
    if paced is None:
        work(n, no_tick)
    else:
        pacer = Pacer(LEAK_RATE)
        while time.perf_counter() - t0 < paced:
            work(n, pacer.tick)
    print(f"{time.perf_counter() - t0:.6f}", flush=True)
