//! The QRS endpoints of one simulated site, served by actix-web over mutual TLS.
//!
//! One handler takes every request: it applies the injected faults, checks the client
//! certificate (when the handshake did not), the xrfkey and `X-Qlik-User`, routes on the
//! lower-cased path (QRS paths ignore case), and records the call.

use std::any::Any;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::SizedStream;
use actix_web::dev::{Extensions, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::SiteInner;
use super::content::{self, UploadError};
use super::filter;
use super::notify::Subscription;
use super::state::{OpError, SYSTEM_USER};

/// QRS's answer to a missing or wrong xrfkey.
pub const XSRF_TEXT: &str = "XSRF prevention check failed. Possible XSRF discovered.";
const JSON_LIMIT: usize = 4 * 1024 * 1024;

/// What the listener knows about a connection: whether the client presented a certificate, and
/// a duplicate of its socket so a fault can cut it.
#[derive(Clone)]
pub struct ConnInfo {
    has_cert: bool,
    sock: Option<Arc<socket2::Socket>>,
}

impl ConnInfo {
    /// Cuts the connection at once (reset), as a network failure would.
    pub fn kill(&self) {
        if let Some(s) = &self.sock {
            let _ = s.set_linger(Some(std::time::Duration::ZERO));
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = conn.downcast_ref::<Tls>() {
        let (tcp, session) = tls.get_ref();
        ext.insert(ConnInfo {
            has_cert: session.peer_certificates().is_some_and(|c| !c.is_empty()),
            sock: socket2::SockRef::from(tcp).try_clone().ok().map(Arc::new),
        });
    }
}

/// A listening socket on 127.0.0.1 that can be re-bound right after a restart.
pub fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    #[cfg(unix)]
    sock.set_reuse_address(true)?;
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Starts the site's HTTPS listener on `listener`; the server runs on the site's runtime.
pub fn serve(
    site: &Arc<SiteInner>,
    listener: std::net::TcpListener,
) -> anyhow::Result<ServerHandle> {
    let data = web::Data::new(Arc::clone(site));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(handle))
    })
    .workers(site.behaviour.workers.max(1))
    .disable_signals()
    .shutdown_timeout(1)
    .on_connect(on_connect)
    .listen_rustls_0_23(listener, site.tls.clone())?
    .run();
    let h = server.handle();
    site.rt.spawn(server);
    Ok(h)
}

/// Query parameters; names compare without regard to case, as QRS does.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(q: &str) -> Self {
        Params(
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect(),
        )
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// The path and query as logged: without the xrfkey parameter.
fn logged_path(path: &str, query: &str) -> String {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            !p.split('=')
                .next()
                .unwrap_or_default()
                .eq_ignore_ascii_case("xrfkey")
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// `UserDirectory=X; UserId=Y` (spaces and key case tolerated) as `X\Y`.
pub fn parse_user_header(h: &str, keys_ignore_case: bool) -> Option<String> {
    let (mut dir, mut uid) = (None, None);
    for part in h.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=')?;
        let (k, v) = (k.trim(), v.trim());
        let is = |name: &str| {
            if keys_ignore_case {
                k.eq_ignore_ascii_case(name)
            } else {
                k == name
            }
        };
        if is("UserDirectory") {
            dir = Some(v);
        } else if is("UserId") {
            uid = Some(v);
        }
    }
    match (dir, uid) {
        (Some(d), Some(u)) if !d.is_empty() && !u.is_empty() && !d.contains('\\') => {
            Some(format!("{d}\\{u}"))
        }
        _ => None,
    }
}

fn text(status: u16, t: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("text/plain; charset=utf-8")
        .body(t.to_string())
}

fn json_resp(status: u16, v: &Value) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .content_type("application/json; charset=utf-8")
        .body(v.to_string())
}

fn op_err(e: OpError) -> HttpResponse {
    text(e.status(), e.text())
}

async fn read_body(mut p: web::Payload) -> Result<Bytes, HttpResponse> {
    let mut b = BytesMut::new();
    while let Some(chunk) = p.next().await {
        let chunk = chunk.map_err(|e| text(400, &e.to_string()))?;
        if b.len() + chunk.len() > JSON_LIMIT {
            return Err(text(413, "Request body too large"));
        }
        b.extend_from_slice(&chunk);
    }
    Ok(b.freeze())
}

async fn handle(
    req: HttpRequest,
    body: web::Payload,
    site: web::Data<Arc<SiteInner>>,
) -> HttpResponse {
    let site = site.get_ref().clone();
    let method = req.method().as_str().to_string();
    let logged = logged_path(req.path(), req.query_string());
    let user_header = req
        .headers()
        .get("x-qlik-user")
        .map(|h| h.to_str().map(str::to_string).unwrap_or_default());
    let user = user_header
        .as_deref()
        .and_then(|h| parse_user_header(h, site.behaviour.user_header_keys_case_insensitive));
    let resp = respond(
        &site,
        &req,
        body,
        &method,
        &logged,
        user_header.is_some(),
        user.clone(),
    )
    .await;
    site.record(&method, &logged, resp.status().as_u16(), user);
    resp
}

#[allow(clippy::too_many_arguments)]
async fn respond(
    site: &Arc<SiteInner>,
    req: &HttpRequest,
    body: web::Payload,
    method: &str,
    logged: &str,
    user_header_present: bool,
    user: Option<String>,
) -> HttpResponse {
    let (latency, status_fault) = site.take_request_faults(&format!("{method} {logged}"));
    if let Some(l) = latency {
        tokio::time::sleep(l).await;
    }
    if let Some((status, retry_after)) = status_fault {
        let mut r = text(status, "Simulated fault");
        if let Some(s) = retry_after
            && let Ok(v) = actix_web::http::header::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut()
                .insert(actix_web::http::header::RETRY_AFTER, v);
        }
        return r;
    }
    let conn = req.conn_data::<ConnInfo>().cloned();
    if !site.behaviour.client_cert_required_in_handshake
        && !conn.as_ref().is_some_and(|c| c.has_cert)
    {
        return text(403, "Forbidden: a client certificate is required");
    }
    let params = Params::parse(req.query_string());
    let header_key = req
        .headers()
        .get("x-qlik-xrfkey")
        .and_then(|h| h.to_str().ok());
    let xrf_ok = match (params.get("xrfkey"), header_key) {
        (Some(q), Some(h)) => {
            let same = if site.behaviour.xrfkey_case_insensitive {
                q.eq_ignore_ascii_case(h)
            } else {
                q == h
            };
            same && q.len() == 16 && q.chars().all(|c| c.is_ascii_alphanumeric())
        }
        _ => false,
    };
    if !xrf_ok {
        return text(403, XSRF_TEXT);
    }
    let actor = match (user_header_present, user) {
        (_, Some(u)) => u,
        (true, None) => {
            return text(
                site.behaviour.bad_user_header_status,
                "The X-Qlik-User header is not of the form UserDirectory=<directory>; UserId=<user>",
            );
        }
        (false, None) if site.behaviour.require_user_header => {
            return text(403, "Forbidden: X-Qlik-User is required");
        }
        (false, None) => SYSTEM_USER.to_string(),
    };
    let path = req.path().to_lowercase();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    route(site, method, &segs, &params, &actor, body, conn).await
}

async fn route(
    site: &Arc<SiteInner>,
    method: &str,
    segs: &[&str],
    params: &Params,
    actor: &str,
    body: web::Payload,
    conn: Option<ConnInfo>,
) -> HttpResponse {
    let parsed_filter = || match params.get("filter") {
        Some(f) => filter::parse(f),
        None => Ok(None),
    };
    match (method, segs) {
        ("GET", ["qrs", "about"]) => json_resp(200, &site.lock().about_json()),
        ("GET", ["qrs", kind]) | ("GET", ["qrs", kind, "full" | "count"]) => {
            let f = match parsed_filter() {
                Ok(f) => f,
                Err(e) => return text(400, &e.to_string()),
            };
            let full = segs.get(2) == Some(&"full");
            match site.lock().list(kind, full, f.as_ref()) {
                Some(items) if segs.get(2) == Some(&"count") => {
                    json_resp(200, &json!({"value": items.len()}))
                }
                Some(items) => json_resp(200, &Value::Array(items)),
                None => text(404, "Not found"),
            }
        }
        ("GET", ["qrs", kind, id]) => match site.lock().get(kind, id) {
            Some(Ok(v)) => json_resp(200, &v),
            Some(Err(e)) => op_err(e),
            None => text(404, "Not found"),
        },
        ("POST", ["qrs", "app", "upload"]) => upload(site, params, actor, body, conn).await,
        ("POST", ["qrs", "app", id, "export", token]) => {
            let skip = params.flag("skipData");
            match site.lock().export(id, token, skip, actor) {
                Ok(v) => json_resp(201, &v),
                Err(e) => op_err(e),
            }
        }
        ("DELETE", ["qrs", "app", id, "export", token]) => match site.lock().app(id) {
            Ok(a) => json_resp(
                200,
                &json!({"exportToken": token, "appId": a.id, "downloadPath": "",
                        "cancelled": false, "schemaPath": "AppExportResponse"}),
            ),
            Err(e) => op_err(e),
        },
        ("PUT", ["qrs", "app", id, "publish"]) => {
            let Some(stream) = params.get("stream") else {
                return text(400, "Missing parameter value(s): stream");
            };
            match site.lock().publish(id, stream, params.get("name"), actor) {
                Ok(v) => json_resp(200, &v),
                Err(e) => op_err(e),
            }
        }
        ("PUT", ["qrs", "app", id, "replace"]) => {
            let Some(target) = params.get("app") else {
                return text(400, "Missing parameter value(s): app");
            };
            match site.lock().replace(id, target, actor) {
                Ok(v) => json_resp(200, &v),
                Err(e) => op_err(e),
            }
        }
        ("POST", ["qrs", "app", id, "copy"]) => {
            let include = params.flag("includecustomproperties");
            match site.lock().copy(id, params.get("name"), include, actor) {
                Ok(v) => json_resp(201, &v),
                Err(e) => op_err(e),
            }
        }
        ("POST", ["qrs", "app", id, "reload"]) => match site.lock().reload(id, actor) {
            Ok(()) => HttpResponse::build(
                StatusCode::from_u16(site.behaviour.reload_status)
                    .unwrap_or(StatusCode::NO_CONTENT),
            )
            .finish(),
            Err(e) => op_err(e),
        },
        ("PUT", ["qrs", "app", id]) => {
            let raw = match read_body(body).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
                return text(400, "The body is not valid JSON");
            };
            match site.lock().update_app(id, &v, actor) {
                Ok(v) => json_resp(200, &v),
                Err(e) => op_err(e),
            }
        }
        ("DELETE", ["qrs", "app", id]) => match site.lock().delete_app(id) {
            Ok(()) => HttpResponse::NoContent().finish(),
            Err(e) => op_err(e),
        },
        ("POST", ["qrs", kind @ ("tag" | "stream")]) => {
            let raw = match read_body(body).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(name) = serde_json::from_slice::<Value>(&raw)
                .ok()
                .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
            else {
                return text(400, "The body must be an entity with a name");
            };
            let mut st = site.lock();
            let r = if *kind == "tag" {
                st.create_tag(&name, actor)
            } else {
                st.create_stream(&name, actor)
            };
            match r {
                Ok(v) => json_resp(201, &v),
                Err(e) => op_err(e),
            }
        }
        ("POST", ["qrs", "notification"]) => subscribe(site, params, actor, body).await,
        ("DELETE", ["qrs", "notification"]) => {
            let Some(handle) = params.get("handle") else {
                return text(400, "Missing parameter value(s): handle");
            };
            let mut st = site.lock();
            let before = st.subscriptions.len();
            st.subscriptions
                .retain(|s| !s.handle.eq_ignore_ascii_case(handle));
            if st.subscriptions.len() < before {
                HttpResponse::build(
                    StatusCode::from_u16(site.behaviour.notification_delete_status)
                        .unwrap_or(StatusCode::NO_CONTENT),
                )
                .finish()
            } else {
                text(404, "Subscription not found")
            }
        }
        ("GET", ["tempcontent", temp, _file]) => download(site, temp, actor, conn),
        _ => text(404, "Not found"),
    }
}

async fn subscribe(
    site: &Arc<SiteInner>,
    params: &Params,
    actor: &str,
    body: web::Payload,
) -> HttpResponse {
    let Some(name) = params.get("name").filter(|n| !n.is_empty()) else {
        return text(400, "Missing parameter value(s): name");
    };
    let raw = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let url = match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::String(s)) => s,
        _ if site.behaviour.accept_unquoted_callback_url => {
            String::from_utf8_lossy(&raw).trim().to_string()
        }
        _ => return text(400, "The body must be the callback URL as a JSON string"),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return text(400, "The callback URL must start with http:// or https://");
    }
    let sub = match Subscription::new(
        name,
        params.get("changetype"),
        params.get("propertyName"),
        params.get("filter"),
        params.get("id"),
        &url,
        actor,
    ) {
        Ok(s) => s,
        Err(e) => return text(400, &e),
    };
    let handle = sub.handle.clone();
    site.lock().subscriptions.push(sub);
    json_resp(201, &json!({"value": handle}))
}

async fn upload(
    site: &Arc<SiteInner>,
    params: &Params,
    actor: &str,
    body: web::Payload,
    conn: Option<ConnInfo>,
) -> HttpResponse {
    let Some(name) = params.get("name").filter(|n| !n.is_empty()) else {
        return text(400, "Missing parameter value(s): name");
    };
    let cut_at = if site.take_drop_fault() {
        Some(64 * 1024)
    } else {
        None
    };
    match content::store_upload(&site.apps_dir, body, cut_at).await {
        Ok((c, reload)) => json_resp(201, &site.lock().upload(name, c, reload, actor)),
        Err(UploadError::Cut) => {
            if let Some(c) = conn {
                c.kill();
            }
            text(500, "Simulated fault: connection dropped")
        }
        Err(UploadError::Body(e)) => text(400, &format!("Upload interrupted: {e}")),
        Err(UploadError::Io(e)) => text(500, &format!("Cannot store the upload: {e}")),
    }
}

fn download(
    site: &Arc<SiteInner>,
    temp: &str,
    actor: &str,
    conn: Option<ConnInfo>,
) -> HttpResponse {
    let (content, len) = match site.lock().take_download(temp, actor) {
        Ok(x) => x,
        Err(e) => return op_err(e),
    };
    let stream = content.stream(len);
    let stream: content::ByteStream = if site.take_drop_fault() {
        Box::pin(CutStream {
            inner: stream,
            sent: 0,
            at: len / 2,
            conn,
            done: false,
        })
    } else {
        stream
    };
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(SizedStream::new(len, stream))
}

/// A download that loses its connection after `at` bytes.
struct CutStream {
    inner: content::ByteStream,
    sent: u64,
    at: u64,
    conn: Option<ConnInfo>,
    done: bool,
}

impl Stream for CutStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sent >= self.at {
            self.done = true;
            if let Some(c) = &self.conn {
                c.kill();
            }
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated fault: connection dropped",
            ))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.sent += b.len() as u64;
                Poll::Ready(Some(Ok(b)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_header_parsing() {
        let cases: &[(&str, bool, Option<&str>)] = &[
            (
                "UserDirectory=INTERNAL; UserId=sa_api",
                true,
                Some("INTERNAL\\sa_api"),
            ),
            ("UserDirectory=DOM;UserId=user", true, Some("DOM\\user")),
            (
                "UserDirectory= Internal; UserId= sa_repository ",
                true,
                Some("Internal\\sa_repository"),
            ),
            (
                "userdirectory=internal;userid=sa_repository",
                true,
                Some("internal\\sa_repository"),
            ),
            ("userdirectory=internal;userid=sa_repository", false, None),
            ("UserId=x", true, None),
            ("garbage", true, None),
            ("UserDirectory=; UserId=x", true, None),
            ("", true, None),
        ];
        for (h, ci, want) in cases {
            assert_eq!(parse_user_header(h, *ci).as_deref(), *want, "{h}");
        }
    }

    #[test]
    fn logged_paths_drop_the_xrfkey() {
        assert_eq!(
            logged_path("/qrs/about", "xrfkey=abcdefghijklmnop"),
            "/qrs/about"
        );
        assert_eq!(
            logged_path(
                "/qrs/app/full",
                "filter=name%20eq%20'a'&Xrfkey=abcdefghijklmnop&x=1"
            ),
            "/qrs/app/full?filter=name%20eq%20'a'&x=1"
        );
    }
}
