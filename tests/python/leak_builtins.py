"""Leaks RATE dicts, RATE floats and RATE lists per second (builtins, created inside the
interpreter), and churns other builtins on the side."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0
dicts, floats, lists = [], [], []
start = time.monotonic()
print("ready", flush=True)
while True:
    due = int((time.monotonic() - start) * RATE)
    while len(dicts) < due:
        n = len(dicts)
        dicts.append({"n": None})  # LEAK-DICT
        floats.append(n * 0.5 + 0.1)  # LEAK-FLOAT
        lists.append([n])  # LEAK-LIST
    junk = [(i, str(i) * 2, i / 3) for i in range(100)]
    del junk
    time.sleep(0.005)
