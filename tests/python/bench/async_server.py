"""Bench workload: an asyncio server on 127.0.0.1 (a free port) and 32 clients, each sending
N JSON lines and reading each reply; bounded: 32·N messages, then everything closes.
See _harness.py for the protocol."""
import asyncio
import json

from _harness import run

CLIENTS = 32


async def handle(reader, writer):
    while line := await reader.readline():
        msg = json.loads(line)
        reply = {"id": msg["id"], "echo": msg["body"], "len": len(msg["body"]), "ok": True}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port, c, n, tick):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(n):
        msg = {"id": i, "client": c, "body": f"message {i} from client {c}", "tags": ["a", "b"]}
        writer.write(json.dumps(msg).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await reader.readline())
        assert reply["id"] == i
        if i % 10 == 0:
            tick()
    writer.close()
    await writer.wait_closed()


async def main(n, tick):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await asyncio.gather(*(client(port, c, n, tick) for c in range(CLIENTS)))


def work(n, tick):
    asyncio.run(main(n, tick))


run(work, 500)
