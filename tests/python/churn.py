"""Allocates and frees millions of objects (dicts, tuples, floats, strings, lists, instances
of its own classes, with and without __slots__, and reference cycles) and keeps none.
Runs until killed; prints a line per million objects."""
import gc


class Plain:
    def __init__(self, i):
        self.i = i


class Slotted:
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


class Cycle:
    def __init__(self):
        self.me = self


print("ready", flush=True)
n = 0
while True:
    for i in range(100_000):
        d = {"a": i, "b": str(i)}
        t = (i, i + 1, d)
        f = i * 1.5 + 0.25
        s = "x" * (i % 50) + str(f)
        l = [t, s]
        p = Plain(i)
        q = Slotted(i)
        if i % 100 == 0:
            Cycle()  # garbage only the collector frees
        if i % 20_000 == 0:
            gc.collect()
        del d, t, f, s, l, p, q
    n += 1
    print(f"{n * 100_000 * 8} objects", flush=True)
