"""The read models as a plain fold of the event log, written independently of projections/.

Each table is computed from the full list of envelopes with straightforward per-event Python, keyed by
primary key, in the shape `read_tables` returns from Postgres, so a test compares them with `==`.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa

from esflow.domain.messages import AGGREGATE_TYPES, EventEnvelope
from esflow.messaging.codec import Codec
from esflow.messaging.process_records import InstanceRecord
from esflow.messaging.topics import event_topic
from esflow.settings import KafkaSettings, TopicSettings
from tests.integration.processor.kit import read_all

Tables = dict[str, dict[Any, dict[str, Any]]]
CODEC = Codec.from_settings()
ZERO = Decimal("0.00")


def committed_log(kafka: KafkaSettings, topics: TopicSettings) -> list[tuple[str, int, int, EventEnvelope]]:
    """Every committed event of every event topic with its position, in log order per partition."""
    out: list[tuple[str, int, int, EventEnvelope]] = []
    for aggregate in AGGREGATE_TYPES:
        for msg in read_all(kafka, event_topic(aggregate, topics)):
            envelope: EventEnvelope = CODEC.decode(msg.value() or b"", kind="event")
            out.append((msg.topic(), msg.partition(), msg.offset(), envelope))
    return sorted(out, key=lambda e: (e[0], e[1], e[2]))


def fold(log: Sequence[tuple[str, int, int, EventEnvelope | InstanceRecord]]) -> Tables:
    """Expected rows per table from (topic, partition, offset, envelope) in log order per partition.

    Process instance records (from the process state topics) fold into ``process_instances``, which is
    in the result only when the log has some.
    """
    orders: dict[Any, dict[str, Any]] = {}
    items: dict[Any, dict[str, Any]] = {}
    owner: dict[Any, Any] = {}
    stats: dict[Any, dict[str, Any]] = {}
    products: dict[Any, dict[str, Any]] = {}
    accounts: dict[Any, dict[str, Any]] = {}
    revenue: dict[Any, dict[str, Any]] = {}
    event_log: dict[Any, dict[str, Any]] = {}
    instances: dict[Any, dict[str, Any]] = {}
    for topic, partition, offset, env in log:
        if isinstance(env, InstanceRecord):
            instances[(env.process, env.instance_id)] = _instance(env)
            continue
        m = env.metadata
        e = env.event
        name = e.type_name()
        at = m.occurred_at
        agg = m.aggregate_id
        event_log[(topic, partition, offset)] = {
            "event_id": m.event_id,
            "event_type": name,
            "schema_version": e.schema_version,
            "aggregate_type": m.aggregate_type,
            "aggregate_id": agg,
            "aggregate_version": m.aggregate_version,
            "occurred_at": at,
            "command_id": m.command_id,
            "correlation_id": m.correlation_id,
            "causation_id": m.causation_id,
            "payload": orjson.loads(orjson.dumps(e.model_dump(), default=str)),
        }
        if m.aggregate_type == "order":
            o = orders.get(agg)
            if name == "OrderPlaced":
                o = orders[agg] = {
                    "customer_id": e.customer_id,  # type: ignore[attr-defined]
                    "status": "PLACED",
                    "sales_channel": e.sales_channel.value,  # type: ignore[attr-defined]
                    "currency": e.items[0].unit_price.currency,  # type: ignore[attr-defined]
                    "lines": {},
                    "paid_amount": ZERO,
                    "refunded_amount": ZERO,
                    "shipping_city": e.shipping_address.city,  # type: ignore[attr-defined]
                    "shipping_country": e.shipping_address.country,  # type: ignore[attr-defined]
                    "payment_ref": None, "carrier": None, "tracking_number": None, "cancel_reason": None,
                    "placed_at": at, "confirmed_at": None, "paid_at": None, "shipped_at": None,
                    "delivered_at": None, "cancelled_at": None, "last_refunded_at": None,
                }  # fmt: skip
                for it in e.items:  # type: ignore[attr-defined]
                    o["lines"][it.product_id] = (it.quantity, it.unit_price.amount)
                    items[(agg, it.product_id)] = _item(it, at, at)
                c = e.customer_id  # type: ignore[attr-defined]
                owner[agg] = c
                s = stats.setdefault(c, {"order_count": 0, "paid_orders": 0, "lifetime_value": ZERO,
                                         "first_order_at": None, "last_order_at": None, "last_order_id": None,
                                         "updated_at": at})  # fmt: skip
                s["order_count"] += 1
                s["first_order_at"] = min(s["first_order_at"] or at, at)
                if s["last_order_at"] is None or (at, agg) > (s["last_order_at"], s["last_order_id"]):
                    s["last_order_at"], s["last_order_id"] = at, agg
                s["updated_at"] = max(s["updated_at"], at)
            else:
                assert o is not None
                if name == "OrderItemAdded":
                    it = e.item  # type: ignore[attr-defined]
                    o["lines"][it.product_id] = (it.quantity, it.unit_price.amount)
                    items[(agg, it.product_id)] = _item(it, at, at)
                elif name == "OrderItemRemoved":
                    o["lines"].pop(e.product_id, None)  # type: ignore[attr-defined]
                    items.pop((agg, e.product_id), None)  # type: ignore[attr-defined]
                elif name == "ShippingAddressUpdated":
                    o["shipping_city"] = e.shipping_address.city  # type: ignore[attr-defined]
                    o["shipping_country"] = e.shipping_address.country  # type: ignore[attr-defined]
                elif name == "OrderConfirmed":
                    o["status"], o["confirmed_at"] = "CONFIRMED", at
                elif name == "OrderPaid":
                    amount = e.amount  # type: ignore[attr-defined]
                    o["status"], o["paid_at"], o["payment_ref"] = "PAID", at, e.payment_ref  # type: ignore[attr-defined]
                    o["paid_amount"] += amount.amount
                    s = stats[owner[agg]]
                    s["paid_orders"] += 1
                    s["lifetime_value"] += amount.amount
                    s["updated_at"] = max(s["updated_at"], at)
                    r = revenue.setdefault((at.date(), amount.currency), _day())
                    r["gross"] += amount.amount
                    r["orders"] += 1
                elif name == "OrderShipped":
                    o["status"], o["shipped_at"] = "SHIPPED", at
                    o["carrier"], o["tracking_number"] = e.carrier, e.tracking_number  # type: ignore[attr-defined]
                elif name == "OrderDelivered":
                    o["status"], o["delivered_at"] = "DELIVERED", at
                elif name == "OrderCancelled":
                    o["status"], o["cancelled_at"], o["cancel_reason"] = "CANCELLED", at, e.reason  # type: ignore[attr-defined]
                elif name == "OrderRefunded":
                    amount = e.amount  # type: ignore[attr-defined]
                    o["refunded_amount"] += amount.amount
                    o["last_refunded_at"] = at
                    s = stats[owner[agg]]
                    s["lifetime_value"] -= amount.amount
                    s["updated_at"] = max(s["updated_at"], at)
                    r = revenue.setdefault((at.date(), amount.currency), _day())
                    r["refunds"] += amount.amount
                    r["refund_count"] += 1
            o["version"], o["updated_at"] = m.aggregate_version, at
        elif m.aggregate_type == "product":
            if name == "ProductRegistered":
                products[agg] = {
                    "sku": e.sku, "name": e.name, "category": e.category,  # type: ignore[attr-defined]
                    "price": e.price.amount, "currency": e.price.currency,  # type: ignore[attr-defined]
                    "on_hand": 0, "reserved": 0, "discontinued": False, "discontinued_at": None,
                    "registered_at": at,
                }  # fmt: skip
            p = products[agg]
            if name == "PriceChanged":
                p["price"], p["currency"] = e.price.amount, e.price.currency  # type: ignore[attr-defined]
            elif name == "StockReceived":
                p["on_hand"] += e.quantity  # type: ignore[attr-defined]
            elif name == "StockReserved":
                p["reserved"] += e.quantity  # type: ignore[attr-defined]
            elif name == "StockReleased":
                p["reserved"] -= e.quantity  # type: ignore[attr-defined]
            elif name == "ProductDiscontinued":
                p["discontinued"], p["discontinued_at"] = True, at
            p["available"] = p["on_hand"] - p["reserved"]
            p["version"], p["updated_at"] = m.aggregate_version, at
        else:
            if name == "AccountOpened":
                accounts[agg] = {
                    "owner_id": e.owner_id, "currency": e.currency,  # type: ignore[attr-defined]
                    "balance": ZERO, "deposits_total": ZERO, "withdrawals_total": ZERO,
                    "status": "OPEN", "opened_at": at, "closed_at": None,
                }  # fmt: skip
            a = accounts[agg]
            if name == "FundsDeposited":
                a["balance"] += e.amount.amount  # type: ignore[attr-defined]
                a["deposits_total"] += e.amount.amount  # type: ignore[attr-defined]
            elif name == "FundsWithdrawn":
                a["balance"] -= e.amount.amount  # type: ignore[attr-defined]
                a["withdrawals_total"] += e.amount.amount  # type: ignore[attr-defined]
            elif name == "AccountFrozen":
                a["status"] = "FROZEN"
            elif name == "AccountUnfrozen":
                a["status"] = "OPEN"
            elif name == "AccountClosed":
                a["status"], a["closed_at"] = "CLOSED", at
            a["last_activity_at"], a["version"] = at, m.aggregate_version
    for o in orders.values():
        lines = o.pop("lines")
        o["item_count"] = sum(q for q, _ in lines.values())
        o["items_total"] = sum((q * p for q, p in lines.values()), ZERO)
        o["lines"] = {str(pid): {"quantity": q, "unit_price": str(p)} for pid, (q, p) in lines.items()}
    for r in revenue.values():
        r["net"] = r["gross"] - r["refunds"]
    tables: Tables = {
        "orders": orders,
        "order_items": items,
        "customer_order_stats": stats,
        "product_catalog": products,
        "account_balances": accounts,
        "daily_revenue": revenue,
        "event_log": event_log,
    }
    if instances:
        tables["process_instances"] = instances
    return tables


def _instance(record: InstanceRecord) -> dict[str, Any]:
    """The latest record of an instance, as its row: the earliest timer is its deadline."""
    timers = sorted(record.timers.items(), key=lambda kv: kv[1])
    return {
        "status": record.status,
        "step": record.step,
        "reason": record.reason,
        "started_at": record.started_at,
        "updated_at": record.updated_at,
        "ended_at": record.ended_at,
        "deadline": timers[0][1] if timers else None,
        "deadline_name": timers[0][0] if timers else None,
        "pending_commands": len(record.sends),
        "attempts": record.attempts,
        "inputs": record.inputs,
        "state": orjson.loads(orjson.dumps(record.state, default=str)),
    }


def _item(it: Any, added: Any, updated: Any) -> dict[str, Any]:
    return {
        "sku": it.sku,
        "quantity": it.quantity,
        "unit_price": it.unit_price.amount,
        "currency": it.unit_price.currency,
        "line_total": it.unit_price.amount * it.quantity,
        "added_at": added,
        "updated_at": updated,
    }


def _day() -> dict[str, Any]:
    return {"gross": ZERO, "refunds": ZERO, "orders": 0, "refund_count": 0}


KEYS = {
    "orders": ("order_id",),
    "order_items": ("order_id", "product_id"),
    "customer_order_stats": ("customer_id",),
    "product_catalog": ("product_id",),
    "account_balances": ("account_id",),
    "daily_revenue": ("day", "currency"),
    "event_log": ("topic", "partition", "offset"),
    "process_instances": ("process", "instance_id"),
}


def read_tables(engine: sa.Engine, schema: str, names: Sequence[str] = tuple(KEYS)) -> Tables:
    """The read models in Postgres in the shape of :func:`fold` (only the columns the fold predicts)."""
    out: Tables = {}
    with engine.connect() as conn:
        for name in names:
            rows = conn.execute(sa.text(f'SELECT * FROM "{schema}"."{name}"')).mappings().all()
            table: dict[Any, dict[str, Any]] = {}
            for row in rows:
                record = dict(row)
                key = tuple(record.pop(k) for k in KEYS[name])
                table[key[0] if len(key) == 1 else key] = record
            out[name] = table
    return out


def comparable(actual: Tables, expected: Tables) -> tuple[Tables, Tables]:
    """Restrict actual rows to the columns the fold predicts, and normalise the orders' JSON lines."""
    trimmed: Tables = {}
    for name, rows in actual.items():
        want = expected.get(name, {})
        sample = next(iter(want.values()), None)
        columns = set(sample) if sample is not None else set()
        out: dict[Any, dict[str, Any]] = {}
        for key, row in rows.items():
            record = {k: v for k, v in row.items() if k in columns}
            if name == "orders" and "lines" in record:
                record["lines"] = {
                    pid: {"quantity": line["quantity"], "unit_price": line["unit_price"]}
                    for pid, line in record["lines"].items()
                }
            out[key] = record
        trimmed[name] = out
    return trimmed, expected
