-- Long-polling (GET /api/orders/{id} with `Prefer: wait=N`): every committed
-- update of an order row is announced on the `order_changed` channel with the
-- order id as payload, so a waiting request in any order-service instance
-- wakes up, whichever instance's consumer applied the change. An UPDATE that
-- changes nothing (e.g. a replayed event) notifies no one.
CREATE FUNCTION notify_order_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_changed', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER orders_notify_changed
    AFTER UPDATE ON orders
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION notify_order_changed();
