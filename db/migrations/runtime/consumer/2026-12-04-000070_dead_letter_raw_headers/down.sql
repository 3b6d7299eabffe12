ALTER TABLE dead_letters
    DROP COLUMN header_values,
    DROP COLUMN header_names;
