"""Leaks RATE strs and RATE ints per second into two lists: neither type is on the GC's
lists, so only the allocator census (pymalloc's arenas) can see them. Each str is 13 ASCII
characters (a 64-byte block), each int one digit (a 32-byte block). On SIGCONT (a paused
census resuming it) it prints how many of each it has leaked so far, as JSON."""
import json, signal, sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 2000.0
strs, ints = [], []


def leaked(signum, frame):
    print(json.dumps({"leaked": len(strs)}), flush=True)


signal.signal(signal.SIGCONT, leaked)
start = time.monotonic()
print("ready", flush=True)
while True:
    due = int((time.monotonic() - start) * RATE)
    while len(strs) < due:
        n = len(strs)
        strs.append(f"leak-{n:08d}")
        ints.append(1_000_000 + 7 * n)
    time.sleep(0.01)
