"""The fixed allocation-heavy workload of `cargo xtask bench`. Waits for a line on stdin
(so a tracer can attach first), runs 10 frames deep, prints the loop's own wall time in seconds, exits."""
import sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


class Slotted:
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v


def work(keep):
    for i in range(N):
        d = {"i": i, "s": str(i)}
        t = (i, d)
        f = i * 0.5
        p = Point(i, f)
        q = Slotted(t)
        if i % 100 == 0:
            keep.append(p)  # a small leak, so the traced run has something to report


def nest(depth, keep):
    """Runs the loop 10 Python frames deep, like code inside a service's call stack."""
    if depth:
        return nest(depth - 1, keep)
    return work(keep)


print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
nest(8, [])
print(f"{time.perf_counter() - t0:.6f}", flush=True)
