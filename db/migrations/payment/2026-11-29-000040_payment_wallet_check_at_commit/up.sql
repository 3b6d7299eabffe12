-- A charge inserts its payment row first: the order_id UNIQUE constraint
-- then answers "already charged?" in the same statement, even for two
-- deliveries of one event at once. A customer seen for the first time has
-- no wallet yet at that point (it is opened in the same transaction when
-- the first debit finds none), so the payment's reference to its wallet is
-- checked at commit.
ALTER TABLE payments
    ALTER CONSTRAINT payments_customer_id_fkey DEFERRABLE INITIALLY DEFERRED;
