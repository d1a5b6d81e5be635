//! Promoter: promotes Qlik Sense apps between sites (DEV -> TEST -> PROD) with approvals.
//!
//! Code tour: start at `migrations/`, then `main.rs` and `cli.rs`, then the modules below.

/// The audit trail: store events and daily CSV files for the Qlik dashboard.
pub mod audit;
/// `promoter bench`: measured app transfers between simulated sites.
pub mod bench;
/// `promoter check`: connect to every site and explain failures.
pub mod check;
/// Command-line interface: one function per subcommand.
pub mod cli;
/// Configuration file, environment overrides, secrets and validation.
pub mod config;
/// The promotion engine: pure decisions and the durable executor.
pub mod engine;
/// Email notices (lettre): templates, SMTP or file transport.
pub mod mail;
/// Typed QRS client over mutual TLS: models, errors, filters, transfers.
pub mod qrs;
/// `promoter serve`: listener, subscription keeper, health and metrics, and the workers.
pub mod serve;
/// Running as a Windows service or a systemd unit.
pub mod service;
/// The QRS simulator (`promoter sim`): simulated Qlik Sense sites for tests and the demo.
pub mod sim;
/// The durable store (SQLite or PostgreSQL): inbox, subscriptions, jobs, audit events.
pub mod store;
/// Logging to the console or rotating files.
pub mod telemetry;
/// rustls set-up shared by the QRS client, the listener and the simulator.
pub mod tls;
/// App versions in S3 or a local folder, and restore.
pub mod versioning;
