"""For spawn mode (`leakscope trace -- python spawn_leak.py SECONDS`): 1,000 objects of its
own class made at once by its first statements (EARLY_LEAK), then RATE objects a second
of another (PACED_LEAK) for SECONDS seconds; then it exits with status 3, or with status 4
on SIGTERM."""
import signal, sys, time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(4))


class Early:
    pass


EARLY = [Early() for _ in range(1000)]  # EARLY_LEAK

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
RATE = 200.0


class Paced:
    pass


kept = []
start = time.monotonic()
while time.monotonic() - start < SECONDS:
    due = int((time.monotonic() - start) * RATE)
    while len(kept) < due:
        kept.append(Paced())  # PACED_LEAK
    time.sleep(0.005)
sys.exit(3)
