"""The stable BI contract: the views of the ``bi`` schema, their columns and what each one means.

BI tools (Metabase, Superset, psql) never read the physical tables, which live in versioned schemas
(``rm_orders_v1``, ...) that a rebuild replaces; they read one view per read model in the ``bi``
schema, which :mod:`esflow.readmodel.versions` points at the live version. This module is what those
views promise: their names, their columns in order, and the text that becomes ``COMMENT ON VIEW`` /
``COMMENT ON COLUMN``, so a BI user finds the documentation in the database itself (psql's describe
commands, a BI tool's data model pane). ``docs/bi.md`` says the same, and a test keeps the three
(tables, contract, docs) in step.

The contract is written out by hand rather than derived from :mod:`esflow.readmodel.tables` on
purpose: a change to a table must not silently change what BI tools see. A view's columns only ever
grow, at the end; a column is never renamed, retyped or removed.

Times are event times unless a comment says otherwise: the ``occurred_at`` the command processor put
on the event (UTC), not the moment a projection wrote the row. Amounts are exact decimals with two
places, in the currency named next to them; nothing is ever converted between currencies.

Comments are plain text (no markdown), and say what a column means, its unit, when it is null and
which event sets it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a BI view: same name as the physical column, and its documentation."""

    name: str
    comment: str


@dataclass(frozen=True, slots=True)
class View:
    """One view of the ``bi`` schema, over one table of the projection's live version schema.

    ``projection`` is ``"*"`` for the freshness view, which unions every live version's
    ``projection_status``.
    """

    name: str
    projection: str
    table: str
    grain: str
    comment: str
    freshness: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """The column names, in view order."""
        return tuple(c.name for c in self.columns)


def _freshness(projection: str, topic: str) -> str:
    # Every read model answers "how fresh" the same way; only the projection and its topic differ.
    return (
        f"projection_status rows with projection = '{projection}', one per partition of {topic}. They "
        "are written in the same transaction as the rows of this view, so they describe exactly the "
        "data you see - last_event_at is the time of the last event included from the partition, lag "
        "what is left to read, halted a partition that stopped."
    )


ORDERS = View(
    name="orders",
    projection="orders",
    table="orders",
    grain="one row per order (order_id)",
    comment=(
        "Orders with their current status, totals, shipping destination, payment, shipment and the time "
        "of every stage, folded from the order events. Amounts are in the order's currency. The lines "
        "are in the lines JSON column, and one row per line in order_items, which is another projection "
        "with its own freshness."
    ),
    freshness=_freshness("orders", "the order event topic"),
    columns=(
        Column("order_id", "Order id (the order aggregate's id, chosen by the sender of PlaceOrder)."),
        Column("customer_id", "Customer who placed the order, from OrderPlaced."),
        Column(
            "status",
            "Life-cycle stage - PLACED, CONFIRMED, PAID, SHIPPED, DELIVERED or CANCELLED - set by the "
            "latest stage event. A refund does not change it, and a paid order can still be CANCELLED "
            "(see paid_at).",
        ),
        Column(
            "sales_channel",
            "Where the order was placed - WEB, MOBILE, STORE or UNKNOWN (UNKNOWN also for orders placed "
            "before the channel was recorded, OrderPlaced v1).",
        ),
        Column(
            "currency",
            "ISO 4217 code of every price and amount of the order (all its lines share it), from its first "
            "line. Null only for an order placed without lines, which the order aggregate refuses.",
        ),
        Column(
            "item_count",
            "Units ordered - the sum of the quantities of the current lines, not the number of lines; "
            "changes with OrderItemAdded and OrderItemRemoved.",
        ),
        Column(
            "items_total",
            "Sum of quantity x unit price over the current lines, in currency: the amount the payment "
            "must equal.",
        ),
        Column(
            "paid_amount", "Amount paid (OrderPaid), in currency; 0.00 until paid. Refunds do not reduce it."
        ),
        Column(
            "refunded_amount",
            "Sum of the refunds (OrderRefunded), in currency; 0.00 when none. What the order finally "
            "brought in is paid_amount - refunded_amount.",
        ),
        Column(
            "lines",
            "The current lines as a JSON object keyed by product id, each "
            '{"sku", "quantity", "unit_price" (a decimal as a string), "currency"}; a removed line is gone.',
        ),
        Column(
            "shipping_city",
            "City of the shipping address, from OrderPlaced, replaced by ShippingAddressUpdated.",
        ),
        Column(
            "shipping_country",
            "Two-letter country code of the shipping address (same events as shipping_city).",
        ),
        Column("payment_ref", "Payment reference from OrderPaid; null until paid."),
        Column("carrier", "Carrier the order was handed to (OrderShipped); null until shipped."),
        Column("tracking_number", "The carrier's tracking number (OrderShipped); null until shipped."),
        Column(
            "cancel_reason", "Reason given when the order was cancelled (OrderCancelled); null otherwise."
        ),
        Column("placed_at", "When the order was placed (OrderPlaced)."),
        Column("confirmed_at", "When the order was confirmed (OrderConfirmed); null until then."),
        Column("paid_at", "When the order was paid (OrderPaid); null until then."),
        Column("shipped_at", "When the order was shipped (OrderShipped); null until then."),
        Column("delivered_at", "When the order was delivered (OrderDelivered); null until then."),
        Column("cancelled_at", "When the order was cancelled (OrderCancelled); null unless cancelled."),
        Column("last_refunded_at", "When the most recent refund happened (OrderRefunded); null when none."),
        Column(
            "version",
            "The order's aggregate version after the last event applied, i.e. how many events the order "
            "has had (1 after OrderPlaced).",
        ),
        Column(
            "updated_at",
            "Event time of the last event applied to the order, not the time the row was written.",
        ),
    ),
)

ORDER_ITEMS = View(
    name="order_items",
    projection="order_items",
    table="order_items",
    grain="one row per order line (order_id, product_id)",
    comment=(
        "The current lines of every order, one row per product on the order, with the unit price agreed "
        "when the line was added. Built from OrderPlaced, OrderItemAdded and OrderItemRemoved: a removed "
        "line's row is deleted, and the lines of cancelled orders stay. Join orders on order_id and "
        "product_catalog on product_id, remembering that each is a separate projection with its own "
        "freshness."
    ),
    freshness=_freshness("order_items", "the order event topic"),
    columns=(
        Column("order_id", "Order the line belongs to (orders.order_id)."),
        Column(
            "product_id",
            "Product ordered (product_catalog.product_id); an order has at most one line per product.",
        ),
        Column(
            "sku", "SKU as written on the order line when it was ordered, not looked up in the catalogue."
        ),
        Column("quantity", "Units ordered; always positive."),
        Column(
            "unit_price",
            "Price of one unit agreed when the line was added, in currency (not the catalogue's current "
            "price).",
        ),
        Column("currency", "ISO 4217 code of unit_price and line_total (the order's currency)."),
        Column("line_total", "quantity x unit_price, in currency."),
        Column("added_at", "When the line was added (its OrderPlaced or OrderItemAdded)."),
        Column(
            "updated_at",
            "Event time of the last event that changed the line. Equal to added_at, since a line does not "
            "change once added (a product removed and added again gets a new row).",
        ),
    ),
)

CUSTOMER_ORDER_STATS = View(
    name="customer_order_stats",
    projection="customer_order_stats",
    table="customer_order_stats",
    grain="one row per customer who has placed an order (customer_id)",
    comment=(
        "Per customer - orders placed and paid, lifetime value, first and last order. Built from "
        "OrderPlaced, OrderPaid and OrderRefunded; cancelling an order changes nothing here. There is no "
        "currency column: the amounts of all the customer's orders are added as they are, which is "
        "meaningful only when they share one currency (nothing enforces that)."
    ),
    freshness=_freshness("customer_order_stats", "the order event topic"),
    columns=(
        Column("customer_id", "Customer (the customer_id of OrderPlaced, as in orders.customer_id)."),
        Column("order_count", "Orders the customer placed, cancelled ones included (OrderPlaced)."),
        Column(
            "paid_orders",
            "Orders of the customer that were paid (OrderPaid), including ones cancelled or refunded later.",
        ),
        Column(
            "lifetime_value",
            "Everything paid minus everything refunded over the customer's orders (OrderPaid and "
            "OrderRefunded amounts), in the orders' currency; different currencies are added unconverted.",
        ),
        Column(
            "first_order_at",
            "When the customer's earliest order was placed (OrderPlaced); set with the row.",
        ),
        Column("last_order_at", "When the customer's most recent order was placed (OrderPlaced)."),
        Column(
            "last_order_id",
            "The customer's most recently placed order (orders.order_id); on equal times, the greatest id.",
        ),
        Column(
            "updated_at",
            "Event time of the latest event counted for the customer (OrderPlaced, OrderPaid or "
            "OrderRefunded), not the time the row was written.",
        ),
    ),
)

PRODUCT_CATALOG = View(
    name="product_catalog",
    projection="product_catalog",
    table="product_catalog",
    grain="one row per registered product (product_id)",
    comment=(
        "The product catalogue with current price and stock - registration data, latest price, units "
        "received, reserved and available, and whether the product is discontinued. Folded from the "
        "product events."
    ),
    freshness=_freshness("product_catalog", "the product event topic"),
    columns=(
        Column("product_id", "Product id (the product aggregate's id)."),
        Column("sku", "Stock-keeping unit code given at registration (ProductRegistered)."),
        Column("name", "Product name given at registration (ProductRegistered)."),
        Column("category", "Category given at registration (ProductRegistered)."),
        Column(
            "price",
            "Current unit price in currency - from ProductRegistered, replaced by each PriceChanged "
            "(prices changed before PriceChanged v2 were integer euro cents and read as EUR).",
        ),
        Column("currency", "ISO 4217 code of price."),
        Column(
            "on_hand",
            "Units received so far (sum of StockReceived). No event takes stock out, so it never "
            "decreases; shipping an order does not change it.",
        ),
        Column(
            "reserved",
            "Units currently reserved for orders - StockReserved adds, StockReleased gives them back.",
        ),
        Column(
            "available",
            "on_hand - reserved, computed by Postgres (a generated column): what can still be reserved.",
        ),
        Column(
            "discontinued",
            "True once the product was discontinued (ProductDiscontinued); it then takes no new "
            "reservations.",
        ),
        Column("discontinued_at", "When the product was discontinued; null while it is still sold."),
        Column("registered_at", "When the product was registered (ProductRegistered)."),
        Column(
            "version",
            "The product's aggregate version after the last event applied, i.e. how many events it has had.",
        ),
        Column(
            "updated_at",
            "Event time of the last event applied to the product, not the time the row was written.",
        ),
    ),
)

ACCOUNT_BALANCES = View(
    name="account_balances",
    projection="account_balances",
    table="account_balances",
    grain="one row per ledger account (account_id)",
    comment=(
        "Ledger accounts with their balance, the money that went in and out, their status and last "
        "activity. Folded from the account events; every amount is in the account's currency."
    ),
    freshness=_freshness("account_balances", "the account event topic"),
    columns=(
        Column("account_id", "Account id (the account aggregate's id)."),
        Column("owner_id", "Owner of the account, from AccountOpened."),
        Column("currency", "ISO 4217 code of every amount of the account, fixed when it was opened."),
        Column(
            "balance",
            "Current balance, deposits_total - withdrawals_total, in currency; never negative "
            "(withdrawals beyond the balance are refused).",
        ),
        Column("deposits_total", "Sum of all deposits (FundsDeposited), in currency."),
        Column("withdrawals_total", "Sum of all withdrawals (FundsWithdrawn), in currency."),
        Column(
            "status",
            "OPEN; FROZEN between AccountFrozen and AccountUnfrozen (withdrawals blocked, deposits "
            "accepted); CLOSED after AccountClosed, for good.",
        ),
        Column("opened_at", "When the account was opened (AccountOpened)."),
        Column("closed_at", "When the account was closed (AccountClosed); null while it is not."),
        Column(
            "last_activity_at",
            "Event time of the account's latest event of any kind - opening, deposit, withdrawal, freeze, "
            "unfreeze or close, not only money movements.",
        ),
        Column(
            "version",
            "The account's aggregate version after the last event applied, i.e. how many events it has had.",
        ),
    ),
)

DAILY_REVENUE = View(
    name="daily_revenue",
    projection="daily_revenue",
    table="daily_revenue",
    grain="one row per UTC day and currency with at least one payment or refund (day, currency)",
    comment=(
        "Order revenue per UTC day and currency - what was paid, what was refunded and the difference, "
        "with the number of payments and refunds. Built from OrderPaid and OrderRefunded: a payment "
        "counts on the day it was paid and a refund on the day it was refunded, so a day's net can be "
        "negative. Currencies are never converted; sum across rows of one currency only."
    ),
    freshness=_freshness("daily_revenue", "the order event topic"),
    columns=(
        Column("day", "UTC calendar day of the payments and refunds in the row (from their event time)."),
        Column("currency", "ISO 4217 code of every amount in the row."),
        Column("gross", "Sum of the payments made that day (OrderPaid amounts), in currency."),
        Column(
            "refunds",
            "Sum of the refunds made that day (OrderRefunded amounts), in currency, whatever day the "
            "orders were paid.",
        ),
        Column("net", "gross - refunds, in currency, computed by Postgres (a generated column)."),
        Column("orders", "Orders paid that day (OrderPaid events; an order is paid once)."),
        Column(
            "refund_count",
            "Refunds made that day (OrderRefunded events; one order can be refunded several times).",
        ),
    ),
)

EVENT_LOG = View(
    name="event_log",
    projection="event_log",
    table="event_log",
    grain="one row per event (topic, partition, offset); event_id is unique too",
    comment=(
        "Every event of every aggregate exactly once, with its Kafka position, its metadata and its "
        "payload as JSON - the audit trail, and the place for questions no other view answers. Payloads "
        "are in the newest schema version (older events are upcast when read)."
    ),
    freshness=_freshness("event_log", "every event topic"),
    columns=(
        Column(
            "topic",
            "Kafka topic the event was read from - the order, product or account event topic (events.order "
            "... with the installation's topic prefix).",
        ),
        Column("partition", "Kafka partition of the event; all events of one aggregate share it."),
        Column(
            "offset",
            'Kafka offset of the event in its partition. A reserved word in SQL - write it "offset".',
        ),
        Column("event_id", "Unique id of the event, given by the command processor."),
        Column("event_type", "Event type name, e.g. OrderPlaced, PriceChanged, FundsDeposited."),
        Column(
            "schema_version",
            "Schema version of payload - the newest esflow knows for the type, which is not necessarily "
            "the version the event was written with (older ones are upcast when read).",
        ),
        Column("aggregate_type", "Kind of aggregate the event belongs to - order, product or account."),
        Column(
            "aggregate_id",
            "Id of the aggregate the event belongs to (orders.order_id, product_catalog.product_id or "
            "account_balances.account_id).",
        ),
        Column(
            "aggregate_version",
            "Position of the event in its aggregate's history - 1, 2, 3 ... without gaps.",
        ),
        Column(
            "occurred_at",
            "When the command processor recorded the event (UTC); every event of one command shares it.",
        ),
        Column("command_id", "Id of the command that produced the event."),
        Column(
            "correlation_id",
            "Id shared by the commands and events of one business flow, set by the sender (the command's "
            "own id when it set none).",
        ),
        Column(
            "causation_id", "Id of the message that caused the event - the command's, so equal to command_id."
        ),
        Column(
            "payload",
            "The event's own fields as a JSON object, without the metadata; decimal amounts and ids are "
            "strings, times ISO 8601 strings.",
        ),
        Column(
            "recorded_at",
            "When the row was written to Postgres (the start of the projection's transaction), not the "
            "event time.",
        ),
    ),
)

PROJECTION_STATUS = View(
    name="projection_status",
    projection="*",
    table="projection_status",
    grain="one row per projection, topic and partition that the projection's live version has read",
    comment=(
        "How fresh every read model is - for the live version of each projection, one row per Kafka "
        "partition it has read, with the last offset applied, the time of the last event included, the "
        "records still to read and whether the partition halted. Filter on projection = the name of a "
        "view to say how current that view's data is; a rebuild switches these rows together with the "
        "view they describe."
    ),
    freshness=(
        "This is the freshness view itself. Each row is written in the same transaction as the read-model "
        "rows it describes; updated_at says when that last happened. A partition the projection has not "
        "read yet has no row."
    ),
    columns=(
        Column(
            "projection", "Projection the row is about, which is also the name of its view (e.g. orders)."
        ),
        Column("topic", "Kafka topic read."),
        Column("partition", "Kafka partition read."),
        Column(
            "last_offset",
            "Offset of the last record handled in the partition (applied, or set aside as a dead letter); "
            "-1 if the partition halted before handling any.",
        ),
        Column(
            "last_event_at",
            "Event time of the last event applied from the partition: the view includes every event of "
            "the partition up to it. Null until the first event is applied.",
        ),
        Column(
            "updated_at",
            "When the projection last committed a batch or recorded a halt for the partition (database "
            "time). There is no heartbeat - an idle partition keeps an old value.",
        ),
        Column(
            "lag",
            "Records left to read in the partition after the last batch, from the Kafka high watermark "
            "when that batch was read; null when unknown. It counts offsets, so Kafka transaction markers "
            "count too (a caught-up partition may show 1), and it is not refreshed while nothing arrives.",
        ),
        Column(
            "events_applied",
            "Records handled in the partition by the live version since it was built, dead-lettered "
            "ones included; a rebuilt version counts again from zero.",
        ),
        Column(
            "halted",
            "True when the partition stopped on a projection bug, a constraint violation or bad input "
            "(with ESFLOW_PROJECTION_ON_BAD_INPUT=halt). Nothing more is applied from it until its worker "
            "restarts; the next batch applied then sets it back to false.",
        ),
        Column("error", "Why the partition halted; null when it has not."),
    ),
)

VIEWS: tuple[View, ...] = (
    ORDERS,
    ORDER_ITEMS,
    CUSTOMER_ORDER_STATS,
    PRODUCT_CATALOG,
    ACCOUNT_BALANCES,
    DAILY_REVENUE,
    EVENT_LOG,
    PROJECTION_STATUS,
)
"""Every view of the ``bi`` schema: one per read model, then the freshness view."""

_BY_NAME = {v.name: v for v in VIEWS}


def view(name: str) -> View:
    """The view called ``name``; a :class:`ValueError` naming the known views otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no BI view {name!r}; the views are: {', '.join(_BY_NAME)}") from None
