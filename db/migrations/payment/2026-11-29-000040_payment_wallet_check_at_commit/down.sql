ALTER TABLE payments
    ALTER CONSTRAINT payments_customer_id_fkey NOT DEFERRABLE;
