-- The outbox row is deleted again by the database itself, right after the
-- INSERT statement, in the same transaction: the relay still reads the
-- INSERT from the WAL (the publication ignores deletes) and the table stays
-- empty, but a service saves one statement and one round trip per event.
CREATE FUNCTION outbox_delete_published() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM outbox WHERE id = NEW.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_delete_published
    AFTER INSERT ON outbox
    FOR EACH ROW
    EXECUTE FUNCTION outbox_delete_published();
