"""The census part of `cargo xtask bench`. Holds N tracked objects, waits for a line on
stdin, runs a fixed CPU-bound loop of allocations, prints its wall time, exits."""
import sys, time

N = int(sys.argv[1])
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000_000


class Item:
    def __init__(self, i):
        self.i = i


held = [Item(i) for i in range(N)]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
acc = 0
for i in range(ROUNDS):
    d = {"i": i}
    acc += len(d)
print(f"{time.perf_counter() - t0:.6f}", flush=True)
