DROP TRIGGER orders_notify_changed ON orders;
DROP FUNCTION notify_order_changed();
