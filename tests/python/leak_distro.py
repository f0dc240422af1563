"""Leaks RATE objects a second of each of the builtins a distro build's probes used to
miss (dict, str, bytes, function, bytearray, list) and of a class, each at its own line
into a module list, and churns tuples, strs and dicts on the side."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 500.0
KEPT = []


class Session:
    def __init__(self, n):
        self.n = n


def make_handler(n):
    return lambda: n  # LEAK-FUNCTION


def serve():
    start = time.monotonic()
    made = 0
    while True:
        due = int((time.monotonic() - start) * RATE)
        while made < due:
            KEPT.append({"id": made})  # LEAK-DICT
            KEPT.append(f"session-{made}")  # LEAK-STR
            KEPT.append(made.to_bytes(8, "little") * 4)  # LEAK-BYTES
            KEPT.append(make_handler(made))
            KEPT.append(bytearray(48))  # LEAK-BYTEARRAY
            KEPT.append([made])  # LEAK-LIST
            KEPT.append(Session(made))  # LEAK-CLASS
            made += 1
        junk = [(i, str(i) * 2, {"i": i}) for i in range(50)]  # CHURN
        del junk
        time.sleep(0.005)


print("ready", flush=True)
serve()
