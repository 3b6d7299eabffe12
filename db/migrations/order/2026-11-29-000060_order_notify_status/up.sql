-- The long-poll notification also carries the status the change left the
-- order in (`<id> <STATUS>`), so a request waiting for the saga's outcome
-- (`until=settled`) reads the order again only when it settled.
CREATE OR REPLACE FUNCTION notify_order_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_changed', NEW.id::text || ' ' || NEW.status);
    RETURN NULL;
END;
$$;
