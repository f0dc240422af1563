"""Leaks RATE objects per second of each of the C extension's types (leakext.Blob via
PyObject_New, leakext.Node via PyObject_GC_New) and churns as many of each."""
import sys, time
import leakext

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0
kept = []
start = time.monotonic()
made = 0
print("ready", flush=True)
while True:
    due = int((time.monotonic() - start) * RATE)
    while made < due:
        kept.append(leakext.blob(7))
        kept.append(leakext.node(None))
        leakext.blob(8), leakext.node(None)  # temporaries: die at once
        made += 1
    time.sleep(0.005)
