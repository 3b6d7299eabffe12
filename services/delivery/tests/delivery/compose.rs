//! The `delivery` container of compose.yaml, checked against this crate by
//! the compose tests every saga participant shares
//! ([`test_support::participant_compose_tests`]).

test_support::participant_compose_tests!(delivery_service, "delivery");
