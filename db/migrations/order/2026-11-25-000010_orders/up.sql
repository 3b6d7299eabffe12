-- Orders, their lines, and the idempotency keys of POST /api/orders.
-- The status column is the state machine of services/order/src/domain/order_status.rs;
-- the payment_* and delivery_* columns remember what those services said.
CREATE TABLE orders (
    id                      uuid        PRIMARY KEY,
    customer_id             uuid        NOT NULL,
    status                  text        NOT NULL CHECK (status IN
        ('PENDING', 'PAID', 'DELIVERY_SCHEDULED', 'REJECTED', 'CANCELLED')),
    status_reason           text,
    total_cents             bigint      NOT NULL CHECK (total_cents >= 0),
    shipping_name           text        NOT NULL,
    shipping_street         text        NOT NULL,
    shipping_city           text        NOT NULL,
    shipping_postal_code    text        NOT NULL,
    shipping_country        text        NOT NULL,
    cancellation_requested_at timestamptz,
    cancellation_note       text,
    payment_status          text CHECK (payment_status IN ('CONFIRMED', 'FAILED', 'REFUNDED')),
    payment_id              uuid,
    payment_amount_cents    bigint,
    payment_reason          text,
    delivery_status         text CHECK (delivery_status IN ('SCHEDULED', 'FAILED', 'CANCELLED')),
    delivery_id             uuid,
    delivery_window_start   timestamptz,
    delivery_window_end     timestamptz,
    tracking_number         text,
    delivery_reason         text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- GET /api/orders: one customer's orders, newest first.
CREATE INDEX orders_customer_newest ON orders (customer_id, created_at DESC, id DESC);

CREATE TABLE order_items (
    order_id          uuid    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no           integer NOT NULL CHECK (line_no >= 0),
    sku               text    NOT NULL,
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_cents  bigint  NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- One row per (customer, Idempotency-Key): the hash of the canonical request
-- body and the order it created. The key row is inserted before the order in
-- the same transaction, hence the deferred foreign key.
CREATE TABLE idempotency_keys (
    customer_id   uuid        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    order_id      uuid        NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, key)
);
