CREATE OR REPLACE FUNCTION notify_order_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_changed', NEW.id::text);
    RETURN NULL;
END;
$$;
