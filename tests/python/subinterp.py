"""Keeps 1234 instances of `Main` in the main interpreter and 777 instances of `Sub` in a
subinterpreter (created through the private _xxsubinterpreters / _interpreters module), so
a census must walk more than one interpreter's GC lists. Then idles."""
import time

try:
    import _xxsubinterpreters as interpreters
except ImportError:
    import _interpreters as interpreters


class Main:
    pass


keep = [Main() for _ in range(1234)]
sub = interpreters.create()
interpreters.run_string(sub, "class Sub:\n    pass\n\nkeep = [Sub() for _ in range(777)]\n")
print("ready", flush=True)
while True:
    time.sleep(1)
