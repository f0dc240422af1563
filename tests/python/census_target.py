"""A target for census tests. It holds a population of its own objects and keeps changing it
in short bursts between sleeps (mode "steady": constant size; "leak": grows by RATE/s;
"churn": only temporaries). On SIGCONT (sent when a paused census resumes it) it counts its
own objects with gc.get_objects() and prints them as JSON, with "exact": false if the pause
may have landed inside a burst. With "garbage", it also leaves N uncollectable cycles in
gc.garbage (gc.DEBUG_SAVEALL)."""
import gc, json, random, signal, sys, time

MODE = sys.argv[1] if len(sys.argv) > 1 else "steady"
RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 1000.0


class Leak:
    def __init__(self, i):
        self.i = i


class Node:
    __slots__ = ("ref", "__weakref__")

    def __init__(self, ref):
        self.ref = ref


class Garbage:
    def __init__(self):
        self.me = self


MINE = ("Leak", "Node", "Garbage")
in_burst = False


def count(signum, frame):
    exact = not in_burst
    counts = {}
    for o in gc.get_objects():
        name = type(o).__name__
        if name in MINE and type(o).__module__ == "__main__":
            counts[name] = counts.get(name, 0) + 1
    print(json.dumps({"counts": counts, "exact": exact}), flush=True)


signal.signal(signal.SIGCONT, count)

if "garbage" in sys.argv:
    gc.set_debug(gc.DEBUG_SAVEALL)
    for _ in range(321):
        Garbage()
    gc.collect()
    gc.set_debug(0)

leaks = [Leak(i) for i in range(50_000)]
nodes = [Node(None) for _ in range(10_000)]  # holding no Leak: exactly 50,000 stay alive
print("ready", flush=True)
start = time.monotonic()
rng = random.Random(1)
while True:
    in_burst = True
    if MODE == "steady":
        # 10,000 Leak and 1,000 Node replaced per second: 2% of each population turns over
        # during a 100 ms walk
        for i in range(200):
            leaks[rng.randrange(len(leaks))] = Leak(0)
            if i % 10 == 0:
                nodes[rng.randrange(len(nodes))] = Node(None)
    elif MODE == "leak":
        due = 50_000 + int((time.monotonic() - start) * RATE)
        while len(leaks) < due:
            leaks.append(Leak(len(leaks)))
    else:
        tmp = [Leak(i) for i in range(500)] + [Node(None) for _ in range(100)]
        del tmp
    in_burst = False
    time.sleep(0.02)
