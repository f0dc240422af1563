"""Leaks RATE instances per second through a chain of calls, so the allocation site is known:
<module> → main → level1 → level2 → level3, which allocates on the line marked LEAK-SITE."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0


class Leak:
    pass


kept = []


def level3():
    return Leak()  # LEAK-SITE


def level2():
    return level3()  # CALLS-LEVEL3


def level1():
    kept.append(level2())  # CALLS-LEVEL2


def churn():
    return [Leak() for _ in range(20)]  # temporaries: a site that must not grow


def main():
    start = time.monotonic()
    print("ready", flush=True)
    while True:
        due = int((time.monotonic() - start) * RATE)
        while len(kept) < due:
            level1()  # CALLS-LEVEL1
        churn()
        time.sleep(0.005)


main()  # CALLS-MAIN
