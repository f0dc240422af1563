"""Retention targets for leak findings. Runs until killed; prints "ready".

    python retention.py records [RATE]   a Record holding a dict, two strings and a float,
                                         leaked into the module-level dict LEAKS (RATE/s,
                                         default 200), beside churn of the same shapes
    python retention.py local [RATE]     Records kept in a local list of the running function
                                         serve (a thread's frame is the root)
    python retention.py task [RATE]      Records kept in a local list of a coroutine that an
                                         asyncio task runs (suspended at each await)
    python retention.py class [RATE]     Records appended to a class attribute, Registry.items
    python retention.py handle [RATE]    a Downloader whose C-level Handle (leakext, no GC
                                         support) holds its bound method: a cycle the
                                         collector cannot break (argv[3]: where leakext is)
"""
import asyncio
import sys
import time

MODE = sys.argv[1]
RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 200.0

LEAKS = {}


class Record:
    def __init__(self, n):
        self.meta = {"n": n, "kind": "record"}
        self.name = "record-%d" % n
        self.label = "label-%d" % (n * 7)
        self.score = n * 0.5


def make_record(n):
    return Record(n)  # RECORD-SITE


class Registry:
    items = []


class Downloader:
    def __init__(self, leakext):
        self.handle = leakext.handle(self.on_done)  # HANDLE-SITE

    def on_done(self):
        pass


def churn(n):
    # The same shapes, dying at once: never a finding.
    for i in range(n):
        r = Record(i)
        del r


def serve():
    history = []
    start = time.monotonic()
    print("ready", flush=True)
    while True:
        due = int((time.monotonic() - start) * RATE)
        while len(history) < due:
            history.append(make_record(len(history)))
        churn(20)
        time.sleep(0.005)


async def worker():
    backlog = []
    start = time.monotonic()
    while True:
        due = int((time.monotonic() - start) * RATE)
        while len(backlog) < due:
            backlog.append(make_record(len(backlog)))
        await asyncio.sleep(0.005)


async def run_task():
    task = asyncio.get_running_loop().create_task(worker())
    print("ready", flush=True)
    await task


def main():
    if MODE == "local":
        serve()
    if MODE == "task":
        asyncio.run(run_task())
    leakext = None
    if MODE == "handle":
        sys.path.insert(0, sys.argv[3])
        import leakext
    start = time.monotonic()
    made = 0
    print("ready", flush=True)
    while True:
        due = int((time.monotonic() - start) * RATE)
        while made < due:
            if MODE == "records":
                LEAKS["r%d" % made] = make_record(made)
            elif MODE == "class":
                Registry.items.append(make_record(made))
            else:
                # Dropped at once: only the cycle keeps it.
                Downloader(leakext)  # DOWNLOADER-SITE
            made += 1
        churn(20)
        time.sleep(0.005)


main()
