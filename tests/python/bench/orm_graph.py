"""Bench workload: an ORM-like object graph (Customer → Orders → Lines, each with a
back-reference to its parent: reference cycles) of dataclasses, built, summed and dropped N
times. See _harness.py for the protocol."""
from dataclasses import dataclass, field

from _harness import run

CUSTOMERS = 1000


@dataclass
class Customer:
    id: int
    name: str
    email: str
    orders: list = field(default_factory=list)


@dataclass
class Order:
    id: int
    customer: Customer
    status: str
    lines: list = field(default_factory=list)


@dataclass
class Line:
    order: Order
    sku: str
    qty: int
    price: float


def build(tick):
    customers = []
    for c in range(CUSTOMERS):
        cust = Customer(c, f"customer-{c}", f"c{c}@example.com")
        for o in range(3):
            order = Order(c * 10 + o, cust, "open" if o else "paid")
            for k in range(4):
                order.lines.append(Line(order, f"SKU-{o}-{k}", k + 1, 2.5 * (k + 1)))
            cust.orders.append(order)
        customers.append(cust)
        tick()
    return customers


def work(n, tick):
    revenue = 0.0
    for _ in range(n):
        customers = build(tick)
        for cust in customers:
            for order in cust.orders:
                revenue += sum(line.qty * line.price for line in order.lines)
                assert order.customer is cust
            tick()
        del customers  # the graph is cyclic: the cycle collector frees it
    return revenue


run(work, 40)
