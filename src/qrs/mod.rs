//! Typed QRS client over mutual TLS.
//!
//! - [`QrsReader`]: reads (GET) and export/download, which leave a site unchanged. The dry
//!   run (`promoter plan`) gets only this type.
//! - [`QrsClient`]: a reader (through `Deref`) plus every write: upload, publish, replace,
//!   copy, delete, update with optimistic concurrency, reload, tags, notifications.
//! - [`QrsSites`]: one client (one connection pool) per configured site.
//! - [`Filter`]: safe filter expressions; [`edit`]: pure JSON edits for updates.
//! - [`transfer`]: streamed export-to-upload between sites; files via
//!   [`QrsReader::download_app_to_file`] and [`QrsClient::upload_app_from_file`].
//! - [`QrsError`]: says what failed and whether to retry ([`QrsError::retryable`]).
//!
//! The client does not retry by itself (except re-applying an update after 409 Conflict);
//! the engine owns the retry policy.

mod client;
pub mod edit;
mod error;
mod filter;
mod models;
pub mod tls;
mod transfer;

pub use client::{QVF_CONTENT_TYPE, QrsClient, QrsReader, QrsSites, new_xrfkey, qrs_path};
pub use error::{QrsError, QrsErrorKind};
pub use filter::{Filter, encode_query, encode_segment, is_guid, quote};
pub use models::{
    About, App, ChangeType, CustomPropertyDefinition, CustomPropertyValue, DefinitionRef,
    ExportResponse, ExternalChangeInfo, NotificationSpec, Stream, StreamRef, Tag, TagRef,
    UNSET_DATE, User, UserAttribute, UserRef,
};
pub use tls::TlsMode;
pub use transfer::{AppDownload, Progress, transfer, upload_from_file};
