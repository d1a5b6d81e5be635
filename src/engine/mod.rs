//! The promotion engine (owned by the engine work): pure decisions, durable executor.

/// Command-line entry points of the engine.
pub mod cli;
/// The pure decision core: snapshot + trigger + configuration -> plan or reason.
pub mod decide;
/// `promoter demo`.
pub mod demo;
/// The durable executor: runs a job's plan step by step, resumable after any crash.
pub mod executor;
/// Contract for mail, versions and audit called by the engine.
pub mod hooks;
/// Domain types of the engine: app snapshots, triggers, plans, commands, reasons.
pub mod model;
/// Transfer progress bars for the commands.
pub mod progress;
/// Retry delays: exponential backoff with jitter.
pub mod retry;
/// App snapshots from QRS reads (read-only).
pub mod snapshot;
/// The executor's steps (transfers, source handling, mail/versions/audit).
pub(crate) mod steps;
/// The workers: inbox intake and job runners (`promoter serve`).
pub mod worker;

pub use worker::run_workers;
/// `promoter promote|jobs|restore`: the executor from the command line.
pub mod commands;
/// Crash points for fault tests (`PROMOTER_FAULT_ABORT_AT`).
pub mod fault;
