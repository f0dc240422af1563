"""The version matrix's target: leaks RATE instances of a class and RATE dicts (of an
atomic value: on no GC list) a second, each at its own line, and churns tuples, strs and
dicts on the side."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0
KEPT = []


class Session:
    pass


def serve():
    start = time.monotonic()
    made = 0
    while True:
        due = int((time.monotonic() - start) * RATE)
        while made < due:
            KEPT.append(Session())  # LEAK-CLASS
            KEPT.append({"user": None})  # LEAK-DICT
            made += 1
        junk = [(i, str(i) * 2, {"i": i}) for i in range(50)]  # CHURN
        del junk
        time.sleep(0.005)


print("ready", flush=True)
serve()
