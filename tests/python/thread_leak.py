"""A worker thread leaks RATE instances per second; the main thread only churns. The leak's
site is the worker's function, on the line marked LEAK-SITE."""
import sys, threading, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0


class Leak:
    pass


kept = []


def worker():
    start = time.monotonic()
    while True:
        due = int((time.monotonic() - start) * RATE)
        while len(kept) < due:
            kept.append(Leak())  # LEAK-SITE
        time.sleep(0.005)


def main_loop():
    print("ready", flush=True)
    while True:
        tmp = [Leak() for _ in range(50)]  # main thread: temporaries only
        del tmp
        time.sleep(0.002)


threading.Thread(target=worker, name="leaky-worker", daemon=True).start()
main_loop()
