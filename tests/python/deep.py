"""Leaks from 100 frames deep: the walk keeps the innermost 64 and marks the stack cut."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 500.0


class Leak:
    pass


kept = []


def down(n, count):
    if n == 0:
        for _ in range(count):
            kept.append(Leak())  # LEAK-SITE
        return
    down(n - 1, count)  # RECURSES


print("ready", flush=True)
start = time.monotonic()
while True:
    due = int((time.monotonic() - start) * RATE)
    down(100, due - len(kept))
    time.sleep(0.005)
