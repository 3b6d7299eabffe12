//! The PostgreSQL side: a logical replication client and the pgoutput decoder.

pub mod connection;
pub mod lsn;
pub mod pgoutput;

pub use connection::{
    CancelKey, ConnectParams, ReplicationConnection, ReplicationError, ReplicationStream,
    StreamMessage,
};
pub use lsn::Lsn;
