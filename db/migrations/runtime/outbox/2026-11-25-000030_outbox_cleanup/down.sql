DROP TRIGGER outbox_delete_published ON outbox;
DROP FUNCTION outbox_delete_published();
