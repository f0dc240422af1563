"""An asyncio task leaks RATE instances per second from inside a coroutine chain:
serve() awaits handle(), which allocates on the line marked LEAK-SITE."""
import asyncio, sys, time

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0


class Leak:
    pass


kept = []


async def handle(n):
    await asyncio.sleep(0)
    for _ in range(n):
        kept.append(Leak())  # LEAK-SITE


async def serve():
    start = time.monotonic()
    made = 0
    while True:
        due = int((time.monotonic() - start) * RATE)
        await handle(due - made)  # AWAITS-HANDLE
        made = due
        await asyncio.sleep(0.005)


async def noise():
    while True:
        tmp = [Leak() for _ in range(20)]
        del tmp
        await asyncio.sleep(0.003)


async def main():
    print("ready", flush=True)
    await asyncio.gather(serve(), noise())


asyncio.run(main())
