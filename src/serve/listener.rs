//! The HTTP listener: QRS callbacks, `/health`, `/ready`, `/metrics`.
//!
//! A callback is answered only after its records are committed to the inbox, and never waits
//! for promotion work. Paths carry the callback secret, so request paths are never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::delivery::{ENDPOINTS, parse_delivery};
use super::keeper::KeeperStatus;
use super::metrics::{EndpointLabel, Metrics, StateLabel};
use crate::config::Settings;
use crate::qrs::QrsReader;
use crate::store::{InboxState, Store};

/// A body this many times over the limit is not read to its end before answering 413.
const DRAIN_FACTOR: usize = 8;

/// What the handlers share.
pub struct Intake {
    /// Where deliveries go.
    pub store: Store,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// The secret path segment QRS must use.
    pub secret: String,
    /// Largest accepted body (`listener.max_body_bytes`).
    pub max_body: usize,
    /// The keeper's last successful check, for `/ready`.
    pub keeper: Arc<KeeperStatus>,
    /// The local site, for `/ready`.
    pub qrs: QrsReader,
    /// Subscription check interval (a check older than a few of these is stale).
    pub interval: Duration,
}

/// A started listener: the server future (to spawn) and the address it bound.
pub struct Listener {
    /// The server future: spawn it.
    pub server: actix_web::dev::Server,
    /// The address actually bound (port 0 resolved).
    pub bound: SocketAddr,
}

/// Binds `listener.bind` (with TLS when configured) and builds the server. It stops gracefully
/// (in-flight deliveries finish) when `shutdown` is cancelled.
pub fn start(
    settings: &Settings,
    intake: Intake,
    shutdown: CancellationToken,
) -> anyhow::Result<Listener> {
    let l = &settings.listener;
    let socket = std::net::TcpListener::bind(&l.bind).with_context(|| {
        format!(
            "cannot listen on {} (listener.bind): is another program (or another promoter) using it?",
            l.bind
        )
    })?;
    let bound = socket.local_addr()?;
    let data = web::Data::new(intake);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .route("/metrics", web::get().to(metrics))
            .route("/notify/{tail:.*}", web::route().to(notify))
            .default_service(web::to(not_found))
    })
    .workers(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
    .shutdown_signal(shutdown.cancelled_owned())
    .shutdown_timeout(10);
    let server = match (&l.tls_cert, &l.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = crate::tls::load_certs(cert).map_err(anyhow::Error::msg)?;
            let key = crate::tls::load_key(key).map_err(anyhow::Error::msg)?;
            crate::tls::init();
            let config = rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .context("listener.tls_cert and listener.tls_key do not make a usable pair")?;
            server.listen_rustls_0_23(socket, config)?
        }
        _ => server.listen(socket)?,
    };
    Ok(Listener {
        server: server.run(),
        bound,
    })
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

/// The `/ready` answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// True when the database, QRS and the subscriptions are fine.
    pub ready: bool,
    /// `ok` or why not.
    pub database: String,
    /// `ok` or why not.
    pub qrs: String,
    /// `ok` or why not.
    pub subscriptions: String,
    /// Last successful subscription check (RFC 3339), if any.
    pub last_subscription_check: Option<String>,
}

/// Decides readiness from the three probes (pure).
pub fn readiness(
    database: Result<(), String>,
    qrs: Result<(), String>,
    last_check_ms: Option<i64>,
    now_ms: i64,
    interval: Duration,
) -> Readiness {
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let stale_after = interval_ms
        .saturating_mul(3)
        .max(interval_ms.saturating_add(30_000));
    let subscriptions = match last_check_ms {
        None => Err("not registered yet".to_string()),
        Some(t) if now_ms.saturating_sub(t) > stale_after => Err(format!(
            "last successful check {} s ago",
            now_ms.saturating_sub(t) / 1000
        )),
        Some(_) => Ok(()),
    };
    let text = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    Readiness {
        ready: database.is_ok() && qrs.is_ok() && subscriptions.is_ok(),
        database: text(&database),
        qrs: text(&qrs),
        subscriptions: text(&subscriptions),
        last_subscription_check: last_check_ms.and_then(|t| {
            chrono::DateTime::from_timestamp_millis(t)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }),
    }
}

async fn ready(st: web::Data<Intake>) -> HttpResponse {
    let probe = Duration::from_secs(3);
    let (db, qrs) = tokio::join!(
        tokio::time::timeout(probe, st.store.ping()),
        tokio::time::timeout(probe, st.qrs.about()),
    );
    let db = match db {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    };
    let qrs = match qrs {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    };
    let r = readiness(
        db,
        qrs,
        st.keeper.last_success_ms(),
        crate::store::now_ms(),
        st.interval,
    );
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(r)
}

async fn metrics(st: web::Data<Intake>) -> HttpResponse {
    match st.store.inbox_counts().await {
        Ok(counts) => {
            let mut depth = 0;
            for state in InboxState::ALL {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                if matches!(state, InboxState::Pending | InboxState::Processing) {
                    depth += n;
                }
                st.metrics
                    .inbox_entries
                    .get_or_create(&StateLabel {
                        state: state.as_str().into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            st.metrics
                .inbox_depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!("metrics: cannot read the inbox depth: {e}"),
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(st.metrics.render())
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body("not found\n")
}

fn text(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body + "\n")
}

/// Compares without returning early, so response timing does not reveal the secret.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `POST /notify/{secret}/app/{update|reload|publish}`.
async fn notify(
    req: HttpRequest,
    tail: web::Path<String>,
    mut payload: web::Payload,
    st: web::Data<Intake>,
) -> HttpResponse {
    let started = Instant::now();
    let parts: Vec<&str> = tail.split('/').collect();
    let endpoint = match parts.as_slice() {
        [secret, "app", kind] if same_secret(secret, &st.secret) => {
            match ENDPOINTS.iter().find(|e| **e == *kind) {
                Some(e) => *e,
                None => {
                    st.metrics.reject("unknown_endpoint");
                    return not_found().await;
                }
            }
        }
        _ => {
            st.metrics.reject("wrong_secret");
            tracing::debug!("callback with a wrong or missing secret refused (404)");
            return not_found().await;
        }
    };
    if req.method() != actix_web::http::Method::POST {
        st.metrics.reject("method");
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "callbacks are POST requests".into(),
        );
    }

    // Read the body, refusing more than max_body (read on a little, so the caller gets the 413
    // instead of a reset connection).
    let max = st.max_body;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut too_large = declared.is_some_and(|n| n > max);
    let mut body = web::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                st.metrics.reject("incomplete_body");
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                );
            }
        };
        seen = seen.saturating_add(chunk.len());
        if seen > max {
            too_large = true;
        }
        if too_large {
            if seen > max.saturating_mul(DRAIN_FACTOR) {
                break;
            }
            continue;
        }
        body.extend_from_slice(&chunk);
    }
    if too_large {
        st.metrics.reject("too_large");
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes (listener.max_body_bytes)"),
        );
    }

    let records = match parse_delivery(endpoint, &body) {
        Ok(r) => r,
        Err(r) => {
            st.metrics.reject(r.reason);
            tracing::info!(endpoint, "callback refused (400): {}", r.message);
            return text(StatusCode::BAD_REQUEST, r.message);
        }
    };
    match st.store.inbox_insert(&records).await {
        Ok(outcome) => {
            let label = EndpointLabel {
                endpoint: endpoint.into(),
            };
            st.metrics.deliveries.get_or_create(&label).inc();
            st.metrics
                .records
                .get_or_create(&label)
                .inc_by(records.len() as u64);
            st.metrics.duplicates.inc_by(u64::from(outcome.duplicates));
            st.metrics
                .ack_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                endpoint,
                new = outcome.new,
                duplicates = outcome.duplicates,
                "delivery stored"
            );
            HttpResponse::Ok().json(serde_json::json!({
                "accepted": records.len(),
                "new": outcome.new,
                "duplicates": outcome.duplicates,
            }))
        }
        Err(e) => {
            st.metrics.reject("store_error");
            tracing::error!(endpoint, "cannot store a delivery: {e}");
            let status = if e.is_retryable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            text(status, "the delivery could not be stored".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }

    #[test]
    fn readiness_needs_all_three() {
        let min = Duration::from_secs(60);
        let now = 10_000_000;
        let ok = readiness(Ok(()), Ok(()), Some(now - 1000), now, min);
        assert!(ok.ready);
        assert_eq!(
            (
                ok.database.as_str(),
                ok.qrs.as_str(),
                ok.subscriptions.as_str()
            ),
            ("ok", "ok", "ok")
        );
        assert!(ok.last_subscription_check.is_some());
        let cases = [
            readiness(Err("down".into()), Ok(()), Some(now), now, min),
            readiness(Ok(()), Err("refused".into()), Some(now), now, min),
            readiness(Ok(()), Ok(()), None, now, min),
            readiness(Ok(()), Ok(()), Some(now - 181_000), now, min),
        ];
        for r in &cases {
            assert!(!r.ready, "{r:?}");
        }
        assert_eq!(cases[0].database, "down");
        assert_eq!(cases[2].subscriptions, "not registered yet");
        assert!(cases[3].subscriptions.contains("181 s ago"));
        // Short intervals still allow 30 s of slack.
        assert!(
            readiness(
                Ok(()),
                Ok(()),
                Some(now - 20_000),
                now,
                Duration::from_secs(1)
            )
            .ready
        );
    }
}
