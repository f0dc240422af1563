"""Objects whose memory is mostly what they own beside themselves, leaked from known lines
into a module list, RATE a second each: bytearrays of 64 KiB (BYTEARRAY_LEAK), dicts of 100
items (DICT_LEAK), lists of 1000 items (LIST_LEAK); and as many bytearrays made and dropped
at another line (BYTEARRAY_CHURN)."""
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
            LEAKS.append({i: i for i in range(100)})  # DICT_LEAK
            LEAKS.append([None] * 1000)  # LIST_LEAK
            tmp = bytearray(SIZE)  # BYTEARRAY_CHURN
            made += 1
        tmp = None
        time.sleep(0.005)


print("ready", flush=True)
serve()
