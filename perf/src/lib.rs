//! Load generator for the commerce gateway: open- and closed-loop scenarios
//! through the public API, latency histograms per request type, saga
//! completion times, CPU/memory of the stack's processes, offline reports.

pub mod api;
pub mod cli;
pub mod metrics;
pub mod procs;
pub mod report;
pub mod report_card;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod svg;
