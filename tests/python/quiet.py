"""A quiet service: it sleeps most of the time and wakes about 50 times a second to handle
a small request (a `Request`, a dict, a str, a tuple: a few hundred objects a second, all
temporary), and leaks RATE (default 20) instances of `Leak` a second into a global list at
the line marked LEAK-SITE, paced by the clock in the same thread. Runs until killed."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0


class Request:
    def __init__(self, path, headers):
        self.path = path
        self.headers = headers


class Leak:
    def __init__(self):
        self.tag = "leaked"  # a shared constant: the instance is the only new object


kept = []


def handle(n):
    req = Request(f"/item/{n}", {"n": n, "accept": "*/*"})  # REQUEST-SITE
    return len(req.path) + len(req.headers)


def main():
    print("ready", flush=True)
    start = time.monotonic()
    n = 0
    while True:
        n += 1
        handle(n)
        due = int((time.monotonic() - start) * RATE)
        while len(kept) < due:
            kept.append(Leak())  # LEAK-SITE
        time.sleep(0.02)


main()
