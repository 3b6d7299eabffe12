-- The placement quota (services/order/src/quotas.rs) counts the orders of a
-- customer that the saga is still working on at every POST /api/orders:
-- one small index range instead of all the customer's orders.
CREATE INDEX orders_open_by_customer ON orders (customer_id)
    WHERE status IN ('PENDING', 'PAID');
