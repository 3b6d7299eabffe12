-- One wallet per customer, opened with the configured initial credit the
-- first time the customer is seen. The balance can never go negative.
CREATE TABLE wallets (
    customer_id    uuid        PRIMARY KEY,
    balance_cents  bigint      NOT NULL CHECK (balance_cents >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One payment per order (never charged twice): CONFIRMED or FAILED when the
-- order is created, CONFIRMED -> REFUNDED on compensation.
CREATE TABLE payments (
    id             uuid        PRIMARY KEY,
    order_id       uuid        NOT NULL UNIQUE,
    customer_id    uuid        NOT NULL REFERENCES wallets (customer_id),
    amount_cents   bigint      NOT NULL CHECK (amount_cents >= 0),
    status         text        NOT NULL CHECK (status IN ('CONFIRMED', 'FAILED', 'REFUNDED')),
    -- INSUFFICIENT_FUNDS for FAILED; NO_CAPACITY or CUSTOMER_CANCELLED for REFUNDED.
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    refunded_at    timestamptz,
    CHECK ((status = 'CONFIRMED') = (reason IS NULL)),
    CHECK ((status = 'REFUNDED') = (refunded_at IS NOT NULL))
);
CREATE INDEX payments_by_customer ON payments (customer_id, created_at DESC, id DESC);

-- Every movement of money, for audit: the balance is the sum of the entries.
CREATE TABLE wallet_entries (
    id             uuid        PRIMARY KEY,
    customer_id    uuid        NOT NULL REFERENCES wallets (customer_id),
    kind           text        NOT NULL CHECK (kind IN ('INITIAL_CREDIT', 'TOP_UP', 'CHARGE', 'REFUND')),
    -- Positive for credits, negative for charges.
    amount_cents   bigint      NOT NULL,
    order_id       uuid,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_entries_by_customer ON wallet_entries (customer_id, created_at);
