DROP INDEX orders_open_by_customer;
