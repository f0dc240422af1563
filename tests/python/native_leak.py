"""Native memory from a C extension (tests/ext/nativeleak.c): RATE blocks of SIZE bytes a
second leaked from a known line, as many churned (allocated and freed) from another,
RATE/10 State objects a second, each leaking 256 bytes of calloc'd state, RATE/10
posix_memalign'd blocks of SIZE bytes and RATE/10 anonymous mappings of 16 KiB leaked, and
as many mappings made and unmapped; RATE/10 blocks of 200 bytes from PyMem_Malloc and of
SIZE from PyMem_RawMalloc leaked, RATE/10 of SIZE malloc'd in an inlined C function, as many PyMem_Malloc'd and freed; RATE/10 Buffer objects
(each owning SIZE malloc'd bytes, freed with it) kept in a list, as many dropped.

`--thread` (third argument): also start a C thread (no GIL, no Python frames) that leaks
1 KiB every 10 ms.

`--busy` (third argument): between the paced calls, churn Python objects as fast as it can
(hundreds of thousands a second, the line marked BUSY_CHURN) instead of sleeping: a target
too busy to be traced exactly under the default budget.
"""
import sys, time
import nativeleak

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 200.0
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
BUSY = len(sys.argv) > 3 and sys.argv[3] == "--busy"
if len(sys.argv) > 3 and sys.argv[3] == "--thread":
    nativeleak.start_thread_leak(1024)


HELD = []


class Point:
    def __init__(self, x):
        self.x = x


def busy(until):
    while time.monotonic() < until:
        pts = [Point(i) for i in range(500)]  # BUSY_CHURN
        pts = None


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
                nativeleak.leak_aligned(SIZE)  # ALIGNED_LEAK
                nativeleak.leak_mapping(16384)  # MAPPING_LEAK
                nativeleak.churn_mapping(16384)  # MAPPING_CHURN
                nativeleak.leak_pymem(200)  # PYMEM_LEAK
                nativeleak.leak_raw(SIZE)  # RAW_LEAK
                nativeleak.leak_inlined(SIZE)  # INLINED_LEAK
                nativeleak.churn_pymem(200)  # PYMEM_CHURN
                HELD.append(nativeleak.Buffer(SIZE))  # BUFFER_LEAK
                nativeleak.Buffer(SIZE)  # BUFFER_CHURN
            made += 1
        if BUSY:
            busy(time.monotonic() + 0.005)
        else:
            time.sleep(0.005)


print("ready", flush=True)
serve()
