"""numpy arrays of 1 MiB (131,072 float64s), RATE a second kept in a module list from a
known line (NDARRAY_LEAK), as many made and dropped at another (NDARRAY_CHURN). An
ndarray's data is malloc'd by numpy (C code), outside the interpreter: a native block that
the array holds."""
import sys, time
import numpy as np

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
N = 131072
LEAKS = []


def serve():
    start = time.monotonic()
    made = 0
    while True:
        due = int((time.monotonic() - start) * RATE)
        while made < due:
            LEAKS.append(np.ones(N))  # NDARRAY_LEAK
            tmp = np.ones(N)  # NDARRAY_CHURN
            made += 1
        tmp = None
        time.sleep(0.005)


print("ready", flush=True)
serve()
