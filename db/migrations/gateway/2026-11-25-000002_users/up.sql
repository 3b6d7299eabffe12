-- Accounts. `email` is stored lowercased by the gateway, so the unique index
-- makes addresses case-insensitively unique; its name is matched when a
-- duplicate registration is mapped to 409 EMAIL_TAKEN.
CREATE TABLE users (
    id              uuid        PRIMARY KEY,
    email           text        NOT NULL,
    name            text        NOT NULL,
    password_hash   text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);
