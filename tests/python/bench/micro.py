"""Bench workload: the micro loop (N iterations of a dict,
str, tuple, float and two class instances, 10 Python frames deep: nothing but allocation),
under the bench protocol of _harness.py (which `memray attach` needs: see wait_for_go)."""
from _harness import run


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


class Slotted:
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v


def loop(n, keep, tick):
    for i in range(n):
        d = {"i": i, "s": str(i)}
        t = (i, d)
        f = i * 0.5
        p = Point(i, f)
        q = Slotted(t)
        if i % 100 == 0:
            keep.append(p)  # a small leak, so the traced run has something to report
            if i % 1000 == 0:
                tick()


def nest(depth, n, keep, tick):
    """Runs the loop 10 Python frames deep, like code inside a service's call stack."""
    if depth:
        return nest(depth - 1, n, keep, tick)
    return loop(n, keep, tick)


def work(n, tick):
    nest(6, n, [], tick)  # with work, run and <module>: 10 frames


run(work, 200_000)
