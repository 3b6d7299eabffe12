-- Bookable delivery windows, created ahead for the booking horizon. A
-- window can never be booked beyond its capacity.
CREATE TABLE delivery_windows (
    id          bigserial   PRIMARY KEY,
    starts_at   timestamptz NOT NULL UNIQUE,
    ends_at     timestamptz NOT NULL,
    capacity    integer     NOT NULL CHECK (capacity >= 0),
    booked      integer     NOT NULL DEFAULT 0,
    CHECK (ends_at > starts_at),
    CHECK (booked >= 0 AND booked <= capacity)
);

-- One delivery per order: SCHEDULED (window booked), FAILED (NO_CAPACITY),
-- or CANCELLED (window released, or cancelled before anything was booked:
-- then a later PaymentConfirmed books nothing).
CREATE TABLE deliveries (
    id               uuid        PRIMARY KEY,
    order_id         uuid        NOT NULL UNIQUE,
    customer_id      uuid        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('SCHEDULED', 'FAILED', 'CANCELLED')),
    window_id        bigint      REFERENCES delivery_windows (id),
    window_start     timestamptz,
    window_end       timestamptz,
    tracking_number  text        UNIQUE,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    cancelled_at     timestamptz,
    CHECK (status <> 'SCHEDULED' OR (window_id IS NOT NULL AND tracking_number IS NOT NULL))
);
CREATE INDEX deliveries_by_customer ON deliveries (customer_id, created_at DESC, id DESC);
CREATE INDEX deliveries_by_window ON deliveries (window_id) WHERE status = 'SCHEDULED';
