"""A reference-count leak: RATE bytes objects a second made at a known line and handed to
nativeleak.hold (tests/ext/nativeleak.c), which takes a reference and never releases it;
as many made at another line and dropped."""
import sys, time
import nativeleak

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 200.0


def serve():
    start = time.monotonic()
    made = 0
    while True:
        due = int((time.monotonic() - start) * RATE)
        while made < due:
            b = bytes(300)  # REFLEAK_BYTES
            nativeleak.hold(b)
            c = bytes(300)  # CHURN_BYTES
            made += 1
        b = c = None
        time.sleep(0.005)


print("ready", flush=True)
serve()
