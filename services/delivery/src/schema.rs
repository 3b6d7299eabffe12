//! The delivery database's tables (db/migrations/delivery).

diesel::table! {
    delivery_windows (id) {
        id -> Int8,
        starts_at -> Timestamptz,
        ends_at -> Timestamptz,
        capacity -> Int4,
        booked -> Int4,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Uuid,
        order_id -> Uuid,
        customer_id -> Uuid,
        status -> Text,
        window_id -> Nullable<Int8>,
        window_start -> Nullable<Timestamptz>,
        window_end -> Nullable<Timestamptz>,
        tracking_number -> Nullable<Text>,
        reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        cancelled_at -> Nullable<Timestamptz>,
        outcome_event_id -> Nullable<Uuid>,
        cancel_event_id -> Nullable<Uuid>,
    }
}

diesel::joinable!(deliveries -> delivery_windows (window_id));
diesel::allow_tables_to_appear_in_same_query!(delivery_windows, deliveries);
