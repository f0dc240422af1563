"""Bench workload: JSON round trips (json.dumps, then json.loads) of 2,000 nested records,
N times, 100 records a document (so `tick` comes about every half millisecond of work, not
every ten). See _harness.py for the protocol."""
import json

from _harness import run

RECORDS = [
    {
        "id": i,
        "name": f"customer-{i}",
        "email": f"customer{i}@example.com",
        "active": i % 3 != 0,
        "score": i * 0.37,
        "tags": ["retail", f"region-{i % 7}", f"tier-{i % 4}"],
        "address": {"street": f"{i} Main St", "city": f"City {i % 50}", "zip": f"{10000 + i}"},
        "orders": [
            {"sku": f"SKU-{i}-{j}", "qty": j + 1, "price": 9.99 + j, "gift": j == 2}
            for j in range(3)
        ],
    }
    for i in range(2000)
]
CHUNKS = [RECORDS[i : i + 100] for i in range(0, len(RECORDS), 100)]


def work(n, tick):
    total = 0
    for _ in range(n):
        for chunk in CHUNKS:
            text = json.dumps(chunk)
            back = json.loads(text)
            total += len(back[-1]["orders"])
            tick()
    return total


run(work, 40)
