"""Leaks for a while, then exits on its own (leakscope must end with a final report)."""
import sys, time

class Leak:
    pass

kept = []
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 3)
while time.monotonic() < end:
    kept.append(Leak())
    time.sleep(0.001)
