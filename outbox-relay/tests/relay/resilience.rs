//! Failures: kill -9 mid-stream, the broker going away, WAL retention while
//! the outbox is idle, and one source down among several.
