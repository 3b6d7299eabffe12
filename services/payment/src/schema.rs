//! The payment database's tables (db/migrations/payment).

diesel::table! {
    wallets (customer_id) {
        customer_id -> Uuid,
        balance_cents -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    payments (id) {
        id -> Uuid,
        order_id -> Uuid,
        customer_id -> Uuid,
        amount_cents -> Int8,
        status -> Text,
        reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        refunded_at -> Nullable<Timestamptz>,
        outcome_event_id -> Nullable<Uuid>,
        refund_event_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    wallet_entries (id) {
        id -> Uuid,
        customer_id -> Uuid,
        kind -> Text,
        amount_cents -> Int8,
        order_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(payments -> wallets (customer_id));
diesel::joinable!(wallet_entries -> wallets (customer_id));
diesel::allow_tables_to_appear_in_same_query!(wallets, payments, wallet_entries);
