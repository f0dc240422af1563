"""Leaks RATE instances of its own class per second (default 2000) into a global list,
paced by the wall clock, and churns some temporaries on the side. Runs until killed."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 2000.0


class Leak:
    def __init__(self):
        self.tag = "leaked"  # a shared constant: the instance is the only new object


kept = []
start = time.monotonic()
print("ready", flush=True)
while True:
    due = int((time.monotonic() - start) * RATE)
    while len(kept) < due:
        kept.append(Leak())  # LEAK-SITE
    # temporaries that die at once: must not show up as growth
    tmp = [{"k": i, "v": (i, str(i))} for i in range(50)]
    del tmp
    time.sleep(0.005)
