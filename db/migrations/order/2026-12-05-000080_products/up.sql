-- The product catalog: the order service prices every order line from it
-- (a client's unit price is never taken, only checked against it). A line
-- keeps the price it was placed at (order_items.unit_price_cents), so a
-- price change here affects new orders only. Inactive products are listed
-- by GET /api/products/{sku} but cannot be ordered.
CREATE TABLE products (
    sku          text        PRIMARY KEY
        CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    name         text        NOT NULL CHECK (btrim(name) <> ''),
    price_cents  bigint      NOT NULL CHECK (price_cents BETWEEN 0 AND 1000000000),
    active       boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- GET /api/products: the active products, by SKU.
CREATE INDEX products_active_sku ON products (sku) WHERE active;

-- The demo catalog. Every SKU a client of this repository sends (README,
-- docs, tests, perf scripts) is here at the price it sends, so clients that
-- still send `unit_price_cents` keep working; the SKU-* ones are the load
-- tool's cheap items (1-99 cents, so its wallets last).
INSERT INTO products (sku, name, price_cents) VALUES
    ('BOOK-1',       'Paperback: Notes on the Analytical Engine', 1250),
    ('pen_blue.2',   'Blue ballpoint pen',                         199),
    ('BOOK-0001',    'Hardcover: Sketch of the Analytical Engine', 1999),
    ('LAMP-0042',    'Desk lamp',                                  4500),
    ('E2E-1',        'End-to-end test item',                       1000),
    ('BENCH-1',      'Benchmark item',                             100),
    ('SKU-BOOK-001', 'Bookmark',                                   49),
    ('SKU-MUG-002',  'Mug coaster',                                35),
    ('SKU-PEN-003',  'Pencil',                                     19),
    ('SKU-TEA-004',  'Tea bag',                                    25),
    ('SKU-CAP-005',  'Bottle cap opener',                          89);
