"""Code objects freed and their addresses reused: each phase compiles a fresh class and
function from the same source shape (so the leak is at the same instruction offset), leaks
instances from it, then drops both. A stale symbolization would name phase k's type with
phase k-1's function."""
import gc, sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0
PHASE = 0.25  # seconds per phase
kept = []
print("ready", flush=True)
phase = 0
while True:
    src = f"class Leak{phase}:\n    pass\n\ndef make{phase}():\n    return Leak{phase}()\n"
    ns = {}
    exec(compile(src, f"<phase {phase}>", "exec"), ns)
    make = ns[f"make{phase}"]
    end = time.monotonic() + PHASE
    while time.monotonic() < end:
        for _ in range(int(RATE * 0.005)):
            kept.append(make())
        time.sleep(0.005)
    del make, ns
    gc.collect()
    phase += 1
