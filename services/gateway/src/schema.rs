//! The gateway's tables (the outbox table is declared in commerce_common).

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        name -> Text,
        password_hash -> Text,
        created_at -> Timestamptz,
    }
}
