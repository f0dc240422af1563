"""Native memory from a C extension (tests/ext/nativeleak.c): RATE blocks of SIZE bytes a
second leaked from a known line, as many churned (allocated and freed) from another, and
RATE/10 State objects a second, each leaking 256 bytes of calloc'd state."""
import sys, time
import nativeleak

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 200.0
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 4096


def serve():
    start = time.monotonic()
    made = 0
    while True:
        due = int((time.monotonic() - start) * RATE)
        while made < due:
            nativeleak.leak(SIZE)  # NATIVE_LEAK
            nativeleak.churn(SIZE)  # NATIVE_CHURN
            if made % 10 == 0:
                nativeleak.State()  # STATE_LEAK
            made += 1
        time.sleep(0.005)


print("ready", flush=True)
serve()
