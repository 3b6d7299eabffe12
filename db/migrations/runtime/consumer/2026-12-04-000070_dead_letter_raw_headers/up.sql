-- The consumer runtime's dead letters keep a record's headers byte for
-- byte. The `headers` jsonb is the readable view: jsonb holds no NUL and
-- no invalid UTF-8, so there a NUL is written as the escape \u0000 and
-- invalid UTF-8 as U+FFFD. Same order in both arrays (the record's header
-- names, ascending); NULL in rows written before this migration.
ALTER TABLE dead_letters
    ADD COLUMN header_names  bytea[],
    ADD COLUMN header_values bytea[];
