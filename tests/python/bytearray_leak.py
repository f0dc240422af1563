"""RATE bytearrays of 64 KiB a second leaked from a known line into a module list, and as
many made and dropped at another: their buffers are the objects' memory."""
import sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 50.0
SIZE = 64 * 1024
LEAKS = []


def serve():
    start = time.monotonic()
    made = 0
    while True:
        due = int((time.monotonic() - start) * RATE)
        while made < due:
            LEAKS.append(bytearray(SIZE))  # BYTEARRAY_LEAK
            tmp = bytearray(SIZE)  # BYTEARRAY_CHURN
            made += 1
        tmp = None
        time.sleep(0.005)


print("ready", flush=True)
serve()
