ALTER FUNCTION outbox_delete_published() RESET enable_seqscan;
