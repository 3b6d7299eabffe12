//! Diesel table definitions of db/migrations/order.

diesel::table! {
    orders (id) {
        id -> Uuid,
        customer_id -> Uuid,
        status -> Text,
        status_reason -> Nullable<Text>,
        total_cents -> Int8,
        shipping_name -> Text,
        shipping_street -> Text,
        shipping_city -> Text,
        shipping_postal_code -> Text,
        shipping_country -> Text,
        cancellation_requested_at -> Nullable<Timestamptz>,
        cancellation_note -> Nullable<Text>,
        payment_status -> Nullable<Text>,
        payment_id -> Nullable<Uuid>,
        payment_amount_cents -> Nullable<Int8>,
        payment_reason -> Nullable<Text>,
        delivery_status -> Nullable<Text>,
        delivery_id -> Nullable<Uuid>,
        delivery_window_start -> Nullable<Timestamptz>,
        delivery_window_end -> Nullable<Timestamptz>,
        tracking_number -> Nullable<Text>,
        delivery_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        placed_event_id -> Nullable<Uuid>,
        cancellation_event_id -> Nullable<Uuid>,
        redrive_attempts -> Int4,
        redriven_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    order_items (order_id, line_no) {
        order_id -> Uuid,
        line_no -> Int4,
        sku -> Text,
        quantity -> Int4,
        unit_price_cents -> Int8,
    }
}

diesel::table! {
    idempotency_keys (customer_id, key) {
        customer_id -> Uuid,
        key -> Text,
        request_hash -> Text,
        order_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    products (sku) {
        sku -> Text,
        name -> Text,
        price_cents -> Int8,
        active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(order_items -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(orders, order_items, idempotency_keys, products);
