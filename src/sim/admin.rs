//! The admin API: plain HTTP on 127.0.0.1, acting as a QMC user would and reading state back.
//! Every route is under `/sites/{alias}`; bodies and answers are JSON (camelCase). The README
//! section of the simulator lists the routes.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Fault, SimSite};

struct Admin {
    sites: Vec<SimSite>,
}

/// An admin API error: a status and a message, answered as `{"error": "..."}`.
#[derive(Debug)]
struct AdminError(u16, String);

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl actix_web::ResponseError for AdminError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.0)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST)
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({"error": self.1}))
    }
}

fn err(status: u16, msg: impl std::fmt::Display) -> AdminError {
    AdminError(status, msg.to_string())
}

type Answer = Result<HttpResponse, AdminError>;

fn site_or_404(a: &Admin, alias: &str) -> Result<SimSite, AdminError> {
    a.sites
        .iter()
        .find(|s| s.alias().eq_ignore_ascii_case(alias))
        .cloned()
        .ok_or_else(|| err(404, format!("no site with alias {alias}")))
}

fn site_json(s: &SimSite) -> Value {
    json!({
        "alias": s.alias(), "port": s.port(), "baseUrl": s.base_url(),
        "certificates": s.certificates(), "startedAt": s.started_at()
    })
}

/// A fault as JSON: `{"kind": "status", "status": 503, "count": 2, ...}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum FaultSpec {
    Latency {
        ms: u64,
    },
    #[serde(rename_all = "camelCase")]
    Status {
        status: u16,
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        path_contains: Option<String>,
        #[serde(default)]
        retry_after: Option<u32>,
    },
    DropMidTransfer {
        #[serde(default = "one")]
        count: u32,
    },
    DuplicateDeliveries {
        times: u32,
    },
    DropDeliveries {
        #[serde(default = "one")]
        count: u32,
    },
    DeliveryDelay {
        ms: u64,
    },
}

fn one() -> u32 {
    1
}

impl From<FaultSpec> for Fault {
    fn from(f: FaultSpec) -> Fault {
        match f {
            FaultSpec::Latency { ms } => Fault::Latency(Duration::from_millis(ms)),
            FaultSpec::Status {
                status,
                count,
                path_contains,
                retry_after,
            } => Fault::Status {
                status,
                count,
                path_contains,
                retry_after,
            },
            FaultSpec::DropMidTransfer { count } => Fault::DropMidTransfer { count },
            FaultSpec::DuplicateDeliveries { times } => Fault::DuplicateDeliveries(times),
            FaultSpec::DropDeliveries { count } => Fault::DropDeliveries { count },
            FaultSpec::DeliveryDelay { ms } => Fault::DeliveryDelay(Duration::from_millis(ms)),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewApp {
    name: String,
    #[serde(default)]
    size_bytes: u64,
    #[serde(default = "default_owner")]
    owner: String,
    #[serde(default)]
    stream: Option<String>,
}

fn default_owner() -> String {
    "CORP\\alice".into()
}

fn default_actor() -> String {
    "INTERNAL\\approver".into()
}

/// `{"properties": {"Name": ["v1", "v2"]}, "asUser": "..."}` or a list of `[name, value]` pairs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetProps {
    properties: Value,
    #[serde(default = "default_actor")]
    as_user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClearProps {
    names: Vec<String>,
    #[serde(default = "default_actor")]
    as_user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Publish {
    stream: String,
    #[serde(default = "default_actor")]
    as_user: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AsUser {
    #[serde(default)]
    as_user: Option<String>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct ChecksumQuery {
    #[serde(default)]
    checksums: bool,
}

fn pairs(v: &Value) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match v {
        Value::Object(m) => {
            for (k, vals) in m {
                match vals {
                    Value::String(s) => out.push((k.clone(), s.clone())),
                    Value::Array(items) => {
                        for i in items {
                            let s = i.as_str().ok_or("values must be strings")?;
                            out.push((k.clone(), s.to_string()));
                        }
                    }
                    _ => return Err("values must be strings or lists of strings".into()),
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                match i.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), Value::String(s)]) => out.push((k.clone(), s.clone())),
                    _ => return Err("list items must be [name, value] pairs".into()),
                }
            }
        }
        _ => return Err("properties must be an object or a list of pairs".into()),
    }
    Ok(out)
}

async fn sites(a: web::Data<Admin>) -> Answer {
    Ok(HttpResponse::Ok().json(a.sites.iter().map(site_json).collect::<Vec<_>>()))
}

async fn site(a: web::Data<Admin>, p: web::Path<String>) -> Answer {
    Ok(HttpResponse::Ok().json(site_json(&site_or_404(&a, &p)?)))
}

/// Snapshots of every app, with checksums computed when asked.
async fn snapshot(s: &SimSite, checksums: bool) -> Result<Vec<super::SimApp>, AdminError> {
    let mut apps = s.apps();
    if checksums {
        for app in &mut apps {
            app.checksum = Some(s.content_checksum(&app.id).await.map_err(|e| err(500, e))?);
        }
    }
    Ok(apps)
}

async fn apps(a: web::Data<Admin>, p: web::Path<String>, q: web::Query<ChecksumQuery>) -> Answer {
    let s = site_or_404(&a, &p)?;
    Ok(HttpResponse::Ok().json(snapshot(&s, q.checksums).await?))
}

async fn streams(
    a: web::Data<Admin>,
    p: web::Path<String>,
    q: web::Query<ChecksumQuery>,
) -> Answer {
    let s = site_or_404(&a, &p)?;
    let apps = snapshot(&s, q.checksums).await?;
    let mut out: Vec<Value> = s
        .streams()
        .into_iter()
        .map(|name| {
            let in_stream: Vec<_> = apps
                .iter()
                .filter(|a| a.stream.as_deref() == Some(name.as_str()))
                .collect();
            json!({"stream": name, "apps": in_stream})
        })
        .collect();
    let unpublished: Vec<_> = apps.iter().filter(|a| a.stream.is_none()).collect();
    out.push(json!({"stream": null, "apps": unpublished}));
    Ok(HttpResponse::Ok().json(out))
}

async fn add_app(a: web::Data<Admin>, p: web::Path<String>, b: web::Json<NewApp>) -> Answer {
    let s = site_or_404(&a, &p)?;
    let id = s
        .add_app(&b.name, b.size_bytes, &b.owner, b.stream.as_deref())
        .map_err(|e| err(400, e))?;
    Ok(HttpResponse::Created().json(json!({"id": id})))
}

async fn add_stream(a: web::Data<Admin>, p: web::Path<String>, b: web::Json<Named>) -> Answer {
    let s = site_or_404(&a, &p)?;
    Ok(HttpResponse::Created().json(json!({"id": s.add_stream(&b.name)})))
}

async fn checksum(a: web::Data<Admin>, p: web::Path<(String, String)>) -> Answer {
    let s = site_or_404(&a, &p.0)?;
    let c = s.content_checksum(&p.1).await.map_err(|e| err(404, e))?;
    Ok(HttpResponse::Ok().json(json!({"id": p.1, "checksum": c})))
}

async fn set_props(
    a: web::Data<Admin>,
    p: web::Path<(String, String)>,
    b: web::Json<SetProps>,
) -> Answer {
    let s = site_or_404(&a, &p.0)?;
    let props = pairs(&b.properties).map_err(|e| err(400, e))?;
    let refs: Vec<(&str, &str)> = props
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    s.set_custom_properties(&p.1, &refs, &b.as_user)
        .map_err(|e| err(400, e))?;
    Ok(HttpResponse::Ok().json(s.app(&p.1)))
}

async fn clear_props(
    a: web::Data<Admin>,
    p: web::Path<(String, String)>,
    b: web::Json<ClearProps>,
) -> Answer {
    let s = site_or_404(&a, &p.0)?;
    let names: Vec<&str> = b.names.iter().map(String::as_str).collect();
    s.clear_custom_properties(&p.1, &names, &b.as_user)
        .map_err(|e| err(400, e))?;
    Ok(HttpResponse::Ok().json(s.app(&p.1)))
}

async fn publish(
    a: web::Data<Admin>,
    p: web::Path<(String, String)>,
    b: web::Json<Publish>,
) -> Answer {
    let s = site_or_404(&a, &p.0)?;
    s.publish_as(&p.1, &b.stream, &b.as_user)
        .map_err(|e| err(400, e))?;
    Ok(HttpResponse::Ok().json(s.app(&p.1)))
}

async fn reload(
    a: web::Data<Admin>,
    p: web::Path<(String, String)>,
    b: Option<web::Json<AsUser>>,
) -> Answer {
    let s = site_or_404(&a, &p.0)?;
    let user = b
        .and_then(|b| b.into_inner().as_user)
        .unwrap_or_else(|| super::state::SYSTEM_USER.to_string());
    s.reload_as(&p.1, &user).map_err(|e| err(400, e))?;
    Ok(HttpResponse::Ok().json(s.app(&p.1)))
}

async fn restart(a: web::Data<Admin>, p: web::Path<String>) -> Answer {
    let s = site_or_404(&a, &p)?;
    s.restart().await;
    Ok(HttpResponse::Ok().json(site_json(&s)))
}

async fn set_fault(a: web::Data<Admin>, p: web::Path<String>, b: web::Json<FaultSpec>) -> Answer {
    site_or_404(&a, &p)?.set_fault(b.into_inner().into());
    Ok(HttpResponse::NoContent().finish())
}

async fn clear_faults(a: web::Data<Admin>, p: web::Path<String>) -> Answer {
    site_or_404(&a, &p)?.clear_faults();
    Ok(HttpResponse::NoContent().finish())
}

async fn calls(a: web::Data<Admin>, p: web::Path<String>) -> Answer {
    Ok(HttpResponse::Ok().json(site_or_404(&a, &p)?.calls()))
}

async fn clear_calls(a: web::Data<Admin>, p: web::Path<String>) -> Answer {
    site_or_404(&a, &p)?.clear_calls();
    Ok(HttpResponse::NoContent().finish())
}

async fn subscriptions(a: web::Data<Admin>, p: web::Path<String>) -> Answer {
    Ok(HttpResponse::Ok().json(site_or_404(&a, &p)?.subscriptions()))
}

/// Starts the admin API on a free port of 127.0.0.1; returns its handle and port.
pub fn serve(
    all: Vec<SimSite>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<(ServerHandle, u16)> {
    let data = web::Data::new(Admin { sites: all });
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::JsonConfig::default().error_handler(|e, _| {
                let msg = e.to_string();
                actix_web::error::InternalError::from_response(e, err(400, msg).error_response())
                    .into()
            }))
            .route("/sites", web::get().to(sites))
            .route("/sites/{alias}", web::get().to(site))
            .route("/sites/{alias}/apps", web::get().to(apps))
            .route("/sites/{alias}/apps", web::post().to(add_app))
            .route("/sites/{alias}/streams", web::get().to(streams))
            .route("/sites/{alias}/streams", web::post().to(add_stream))
            .route("/sites/{alias}/apps/{id}/checksum", web::get().to(checksum))
            .route(
                "/sites/{alias}/apps/{id}/customproperties",
                web::put().to(set_props),
            )
            .route(
                "/sites/{alias}/apps/{id}/customproperties/clear",
                web::post().to(clear_props),
            )
            .route("/sites/{alias}/apps/{id}/publish", web::post().to(publish))
            .route("/sites/{alias}/apps/{id}/reload", web::post().to(reload))
            .route("/sites/{alias}/restart", web::post().to(restart))
            .route("/sites/{alias}/faults", web::post().to(set_fault))
            .route("/sites/{alias}/faults", web::delete().to(clear_faults))
            .route("/sites/{alias}/calls", web::get().to(calls))
            .route("/sites/{alias}/calls", web::delete().to(clear_calls))
            .route("/sites/{alias}/subscriptions", web::get().to(subscriptions))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let h = server.handle();
    rt.spawn(server);
    Ok((h, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        let f: FaultSpec = serde_json::from_value(
            json!({"kind": "status", "status": 429, "count": 2, "pathContains": "/qrs/app/upload", "retryAfter": 1}),
        )
        .unwrap();
        assert_eq!(
            Fault::from(f),
            Fault::Status {
                status: 429,
                count: 2,
                path_contains: Some("/qrs/app/upload".into()),
                retry_after: Some(1)
            }
        );
        let f: FaultSpec = serde_json::from_value(json!({"kind": "dropMidTransfer"})).unwrap();
        assert_eq!(Fault::from(f), Fault::DropMidTransfer { count: 1 });
        assert!(serde_json::from_value::<FaultSpec>(json!({"kind": "nope"})).is_err());
    }

    #[test]
    fn property_bodies() {
        assert_eq!(
            pairs(&json!({"PromoteToServer": ["test - Overwrite", "prod - Duplicate"], "PromotionApproval": "Approve"}))
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            pairs(&json!([["PromotionApproval", "Approve"]])).unwrap(),
            vec![("PromotionApproval".to_string(), "Approve".to_string())]
        );
        assert!(pairs(&json!("x")).is_err());
    }
}
