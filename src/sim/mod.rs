//! The QRS simulator: simulated Qlik Sense sites for tests, the demo, the benchmark and exploring.
//!
//! Every site is an HTTPS listener on 127.0.0.1 with its own CA, requiring a client certificate
//! signed by it, and behaving as `qrs-api.md` describes where a behaviour is confirmed; the
//! unconfirmed behaviours are [`Behaviour`] settings. A plain-HTTP admin API (and the Rust API
//! of [`SimSite`]) acts as a QMC user would and reads state back.
//!
//! Code tour: `certs` (CAs and PEM files), `content` (synthetic and uploaded QVF bytes),
//! `filter` (the QRS filter language), `state` (entities and every change), `notify`
//! (subscriptions and deliveries), `http` (the QRS endpoints), `admin` (the admin API),
//! `fixture` (seeding), `setup` (folders, config files, listeners).

mod admin;
mod certs;
mod content;
mod filter;
mod fixture;
mod http;
mod notify;
mod setup;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use anyhow::Context;

pub use certs::issue_ca_and_client;
pub use fixture::DEFAULT_FIXTURE;
pub use http::XSRF_TEXT;
use state::SiteState;

/// Behaviours the QRS documentation leaves open, and knobs of the simulation.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Status when `X-Qlik-User` is present but cannot be parsed (UNCONFIRMED). Default 400.
    pub bad_user_header_status: u16,
    /// Refuse calls without `X-Qlik-User` with 403 instead of running them as the system
    /// account (the documented behaviour). Default false.
    pub require_user_header: bool,
    /// The `X-Qlik-User` keys (`UserDirectory`, `UserId`) match without regard to case
    /// (UNCONFIRMED). Default true.
    pub user_header_keys_case_insensitive: bool,
    /// The xrfkey value comparison ignores case (UNCONFIRMED; exact match assumed). Default false.
    pub xrfkey_case_insensitive: bool,
    /// Without a client certificate the TLS handshake fails (true, default) or the request gets
    /// 403 (false) (UNCONFIRMED).
    pub client_cert_required_in_handshake: bool,
    /// A PUT that omits `customProperties` or `tags` empties them, as QRS "substitutes a default
    /// value" for omitted properties (UNCONFIRMED which ones). Default true.
    pub put_resets_omitted_collections: bool,
    /// A PUT or create with a custom property value outside the definition's `choiceValues`,
    /// or a definition not valid for apps, gets 400 (UNCONFIRMED). Values already on the app are
    /// accepted. Default true.
    pub validate_custom_property_values: bool,
    /// Status for publishing an already published app (UNCONFIRMED). Default 400.
    pub publish_published_status: u16,
    /// Status for a second download of an export (UNCONFIRMED). Default 404.
    pub second_download_status: u16,
    /// Status when another user downloads an export (UNCONFIRMED). Default 403.
    pub other_user_download_status: u16,
    /// Status of `POST /qrs/app/{id}/reload` (UNCONFIRMED). Default 204.
    pub reload_status: u16,
    /// Status of `DELETE /qrs/notification` (UNCONFIRMED). Default 204; unknown handle 404.
    pub notification_delete_status: u16,
    /// Accept a callback URL posted as a raw (unquoted) body (UNCONFIRMED). Default true.
    pub accept_unquoted_callback_url: bool,
    /// Copy keeps custom properties and tags only with `includecustomproperties=true`
    /// (UNCONFIRMED). When false, copies always keep them. Default true.
    pub copy_properties_only_when_asked: bool,
    /// Send an Update notification to `propertyName` subscriptions even when that property did
    /// not change (QRS is reported to do so). Default false.
    pub spurious_updates: bool,
    /// Timeout of one notification delivery. Default 10 s.
    pub delivery_timeout: Duration,
    /// How long a restarted site refuses connections. Default 200 ms.
    pub restart_downtime: Duration,
    /// Worker threads per site listener. Default 1.
    pub workers: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            bad_user_header_status: 400,
            require_user_header: false,
            user_header_keys_case_insensitive: true,
            xrfkey_case_insensitive: false,
            client_cert_required_in_handshake: true,
            put_resets_omitted_collections: true,
            validate_custom_property_values: true,
            publish_published_status: 400,
            second_download_status: 404,
            other_user_download_status: 403,
            reload_status: 204,
            notification_delete_status: 204,
            accept_unquoted_callback_url: true,
            copy_properties_only_when_asked: true,
            spurious_updates: false,
            delivery_timeout: Duration::from_secs(10),
            restart_downtime: Duration::from_millis(200),
            workers: 1,
        }
    }
}

/// What to start: folder, sites, fixture and behaviour.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Folder for certificates, the generated config, uploaded apps.
    pub dir: PathBuf,
    /// Site aliases; the first is the local (source) site.
    pub sites: Vec<String>,
    /// Fixture file (JSON); `None` uses the built-in `tests/fixtures/sim-default.json`.
    pub fixture: Option<PathBuf>,
    /// Issue the server certificates only to this name (instead of `localhost` and
    /// `127.0.0.1`), as Qlik often issues them to the short host name.
    pub server_name: Option<String>,
    /// `listener.bind` written to `promoter.toml`. Default `127.0.0.1:0`.
    pub listener_bind: Option<String>,
    /// Unconfirmed behaviours and knobs.
    pub behaviour: Behaviour,
}

impl SimOptions {
    /// Options with the default fixture and behaviour.
    pub fn new(dir: impl Into<PathBuf>, sites: &[&str]) -> Self {
        SimOptions {
            dir: dir.into(),
            sites: sites.iter().map(|s| s.to_string()).collect(),
            fixture: None,
            server_name: None,
            listener_bind: None,
            behaviour: Behaviour::default(),
        }
    }
}

/// A fault injected into one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Every QRS response is delayed this long (until cleared).
    Latency(Duration),
    /// The next `count` requests whose `"METHOD /path?query"` contains `path_contains` (all
    /// requests when `None`) get `status` without being carried out, with `Retry-After` when set.
    Status {
        /// The status answered (503, 429...).
        status: u16,
        /// How many requests get it.
        count: u32,
        /// Only requests whose `"METHOD /path?query"` contains this (ignoring case).
        path_contains: Option<String>,
        /// `Retry-After` seconds sent with the status.
        retry_after: Option<u32>,
    },
    /// The next `count` app downloads or uploads lose their connection half-way.
    DropMidTransfer {
        /// How many transfers are cut.
        count: u32,
    },
    /// Every notification is delivered this many times (until cleared).
    DuplicateDeliveries(u32),
    /// The next `count` notification deliveries are silently dropped.
    DropDeliveries {
        /// How many deliveries are lost.
        count: u32,
    },
    /// Notifications are delivered this much later (until cleared).
    DeliveryDelay(Duration),
}

/// One QRS call as the site saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// `GET`, `POST`...
    pub method: String,
    /// Path and query, without the `xrfkey` parameter.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// `DIRECTORY\userid` from `X-Qlik-User`, when present and valid.
    pub user: Option<String>,
    /// When the call arrived (ISO 8601).
    pub at: String,
}

/// A change subscription held by a site.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimSubscription {
    /// The handle returned at creation (used to delete it).
    pub handle: String,
    /// Entity type (`App`...).
    pub name: String,
    /// `Add`, `Update`, `Delete`, or `None` for all.
    pub change_type: Option<String>,
    /// `propertyName` (a leading `!` inverts it).
    pub property_name: Option<String>,
    /// The QRS filter restricting which entities notify.
    pub filter: Option<String>,
    /// The one entity watched, when given.
    pub id: Option<String>,
    /// Where changes are POSTed.
    pub callback_url: String,
    /// Who subscribed (`DIRECTORY\userid`).
    pub user: String,
}

/// A snapshot of one app.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimApp {
    /// The app GUID.
    pub id: String,
    /// The name (not unique).
    pub name: String,
    /// The description.
    pub description: String,
    /// `DIRECTORY\userid`.
    pub owner: String,
    /// Stream name, when published.
    pub stream: Option<String>,
    /// Stream GUID, when published.
    pub stream_id: Option<String>,
    /// Whether the app is published.
    pub published: bool,
    /// `publishTime`; `1753-01-01T00:00:00.000Z` when never published.
    pub publish_time: String,
    /// `(definition name, value)`, one pair per value.
    pub custom_properties: Vec<(String, String)>,
    /// Tag names.
    pub tags: Vec<String>,
    /// `modifiedDate` (ISO 8601, milliseconds).
    pub modified_date: String,
    /// `modifiedByUserName`: who made the last change (`DIRECTORY\userid`).
    pub modified_by: String,
    /// `lastReloadTime`.
    pub last_reload_time: String,
    /// Content size in bytes.
    pub file_size: u64,
    /// SHA-256 (hex) of the content, when already known; see [`SimSite::content_checksum`].
    pub checksum: Option<String>,
}

impl SimApp {
    /// The values of one custom property.
    pub fn property(&self, name: &str) -> Vec<&str> {
        self.custom_properties
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Injected faults of one site (shared with its delivery task).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    latency: Option<Duration>,
    statuses: Vec<StatusFault>,
    drop_transfers: u32,
    duplicates: u32,
    drop_deliveries: u32,
    delivery_delay: Option<Duration>,
}

#[derive(Debug)]
struct StatusFault {
    status: u16,
    remaining: u32,
    path_contains: Option<String>,
    retry_after: Option<u32>,
}

/// Everything one site is made of; [`SimSite`] is a handle to it.
pub(crate) struct SiteInner {
    alias: String,
    port: u16,
    certificates: PathBuf,
    apps_dir: PathBuf,
    behaviour: Behaviour,
    state: Mutex<SiteState>,
    faults: Arc<Mutex<Faults>>,
    calls: Mutex<Vec<CallRecord>>,
    server: Mutex<Option<ServerHandle>>,
    tls: rustls::ServerConfig,
    rt: tokio::runtime::Handle,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SiteInner {
    fn lock(&self) -> MutexGuard<'_, SiteState> {
        lock(&self.state)
    }

    fn record(&self, method: &str, path: &str, status: u16, user: Option<String>) {
        lock(&self.calls).push(CallRecord {
            method: method.to_string(),
            path: path.to_string(),
            status,
            user,
            at: state::fmt_date(chrono::Utc::now()),
        });
    }

    /// The latency to add and the status fault (status, Retry-After) this request consumes.
    fn take_request_faults(&self, what: &str) -> (Option<Duration>, Option<(u16, Option<u32>)>) {
        let mut f = lock(&self.faults);
        let latency = f.latency;
        let mut hit = None;
        if let Some(sf) = f.statuses.iter_mut().find(|s| {
            s.remaining > 0
                && s.path_contains
                    .as_deref()
                    .is_none_or(|p| what.to_lowercase().contains(&p.to_lowercase()))
        }) {
            sf.remaining -= 1;
            hit = Some((sf.status, sf.retry_after));
        }
        f.statuses.retain(|s| s.remaining > 0);
        (latency, hit)
    }

    /// Whether this transfer loses its connection (consumes one `DropMidTransfer`).
    fn take_drop_fault(&self) -> bool {
        let mut f = lock(&self.faults);
        if f.drop_transfers > 0 {
            f.drop_transfers -= 1;
            true
        } else {
            false
        }
    }

    fn stop_listener(&self) -> Option<ServerHandle> {
        lock(&self.server).take()
    }

    /// Stops the listener, forgets subscriptions, waits the downtime, listens again on the same
    /// port. Runs on the site's runtime.
    async fn restart(self: Arc<Self>) -> anyhow::Result<()> {
        if let Some(h) = self.stop_listener() {
            h.stop(false).await;
        }
        self.lock().restart();
        tokio::time::sleep(self.behaviour.restart_downtime).await;
        let mut last = None;
        for _ in 0..100 {
            match http::bind(self.port) {
                Ok(l) => {
                    let h = http::serve(&self, l)?;
                    *lock(&self.server) = Some(h);
                    tracing::info!(site = %self.alias, port = self.port, "simulated site restarted");
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(anyhow::anyhow!(
            "cannot listen on port {} again after the restart of site {}: {}",
            self.port,
            self.alias,
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    fn sim_app(st: &SiteState, a: &state::App) -> SimApp {
        let stream = a.stream_id.as_deref().and_then(|id| st.stream_by_id(id));
        SimApp {
            id: a.id.clone(),
            name: a.name.clone(),
            description: a.description.clone(),
            owner: st
                .user_by_id(&a.owner_id)
                .map(state::User::qualified)
                .unwrap_or_default(),
            stream: stream.map(|s| s.name.clone()),
            stream_id: stream.map(|s| s.id.clone()),
            published: a.published,
            publish_time: a
                .publish_time
                .map(state::fmt_date)
                .unwrap_or_else(|| state::UNSET_DATE.to_string()),
            custom_properties: a
                .custom_properties
                .iter()
                .map(|v| {
                    (
                        st.def_by_id(&v.def_id)
                            .map(|d| d.name.clone())
                            .unwrap_or_default(),
                        v.value.clone(),
                    )
                })
                .collect(),
            tags: a
                .tag_ids
                .iter()
                .filter_map(|t| st.tag_by_id(t).map(|t| t.name.clone()))
                .collect(),
            modified_date: state::fmt_date(a.modified),
            modified_by: a.modified_by.clone(),
            last_reload_time: state::fmt_date(a.last_reload_time),
            file_size: a.content.size(),
            checksum: a.content.known_checksum(),
        }
    }
}

/// A handle to one simulated site (cheap to clone).
#[derive(Clone)]
pub struct SimSite(Arc<SiteInner>);

impl std::fmt::Debug for SimSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimSite({} on port {})", self.0.alias, self.0.port)
    }
}

fn op<T>(r: Result<T, state::OpError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

impl SimSite {
    /// The site's alias.
    pub fn alias(&self) -> &str {
        &self.0.alias
    }

    /// The HTTPS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `https://localhost:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.0.port)
    }

    /// The folder with `client.pem`, `client_key.pem` and `root.pem`.
    pub fn certificates(&self) -> PathBuf {
        self.0.certificates.clone()
    }

    /// A snapshot of every app.
    pub fn apps(&self) -> Vec<SimApp> {
        let st = self.0.lock();
        st.apps.iter().map(|a| SiteInner::sim_app(&st, a)).collect()
    }

    /// The app with this id.
    pub fn app(&self, id: &str) -> Option<SimApp> {
        let st = self.0.lock();
        st.app(id).ok().map(|a| SiteInner::sim_app(&st, a))
    }

    /// Apps with this name (names are not unique).
    pub fn app_by_name(&self, name: &str) -> Vec<SimApp> {
        self.apps().into_iter().filter(|a| a.name == name).collect()
    }

    /// Apps published in the stream with this name.
    pub fn apps_in_stream(&self, stream: &str) -> Vec<SimApp> {
        self.apps()
            .into_iter()
            .filter(|a| {
                a.stream
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(stream))
            })
            .collect()
    }

    /// Stream names.
    pub fn streams(&self) -> Vec<String> {
        self.0
            .lock()
            .streams
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// The SHA-256 (hex) of an app's content (computed once, then cached).
    pub async fn content_checksum(&self, app_id: &str) -> anyhow::Result<String> {
        let content = op(self.0.lock().app(app_id).map(|a| a.content.clone()))?;
        content.checksum().await
    }

    /// Adds an app with synthetic content of `size_bytes`, owned by `owner` (`DIR\user`),
    /// published in `stream` (a name) or not. Returns its id.
    pub fn add_app(
        &self,
        name: &str,
        size_bytes: u64,
        owner: &str,
        stream: Option<&str>,
    ) -> anyhow::Result<String> {
        op(self.0.lock().add_app(name, size_bytes, owner, stream))
    }

    /// Adds a stream; returns its id.
    pub fn add_stream(&self, name: &str) -> String {
        self.0.lock().add_stream(name, state::SYSTEM_USER)
    }

    /// Replaces the values of the named custom properties, as `as_user` in the QMC would (a
    /// property with several values: pass its name several times).
    pub fn set_custom_properties(
        &self,
        app_id: &str,
        props: &[(&str, &str)],
        as_user: &str,
    ) -> anyhow::Result<()> {
        op(self.0.lock().set_custom_properties(app_id, props, as_user))
    }

    /// Removes every value of the named custom properties.
    pub fn clear_custom_properties(
        &self,
        app_id: &str,
        names: &[&str],
        as_user: &str,
    ) -> anyhow::Result<()> {
        op(self
            .0
            .lock()
            .clear_custom_properties(app_id, names, as_user))
    }

    /// Publishes an app to a stream (name or id), as the system account.
    pub fn publish(&self, app_id: &str, stream: &str) -> anyhow::Result<()> {
        self.publish_as(app_id, stream, state::SYSTEM_USER)
    }

    /// Publishes an app to a stream (name or id), as `as_user`.
    pub fn publish_as(&self, app_id: &str, stream: &str, as_user: &str) -> anyhow::Result<()> {
        op(self.0.lock().publish(app_id, stream, None, as_user)).map(|_| ())
    }

    /// Reloads an app (new data, new `lastReloadTime`), as the system account.
    pub fn reload(&self, app_id: &str) -> anyhow::Result<()> {
        self.reload_as(app_id, state::SYSTEM_USER)
    }

    /// Reloads an app as `as_user`.
    pub fn reload_as(&self, app_id: &str, as_user: &str) -> anyhow::Result<()> {
        op(self.0.lock().reload(app_id, as_user))
    }

    /// Restarts the site: the listener goes away for the downtime, subscriptions are forgotten,
    /// `simulatorStartTime` in `/qrs/about` changes. Entities and pending exports stay.
    pub async fn restart(&self) {
        let inner = Arc::clone(&self.0);
        let rt = self.0.rt.clone();
        match rt.spawn(inner.restart()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{e:#}"),
            Err(e) => tracing::error!("restart of site {} failed: {e}", self.0.alias),
        }
    }

    /// The `simulatorStartTime` of `/qrs/about` (changes on restart).
    pub fn started_at(&self) -> String {
        state::fmt_date(self.0.lock().started_at)
    }

    /// Injects a fault.
    pub fn set_fault(&self, f: Fault) {
        let mut faults = lock(&self.0.faults);
        match f {
            Fault::Latency(d) => faults.latency = Some(d),
            Fault::Status {
                status,
                count,
                path_contains,
                retry_after,
            } => faults.statuses.push(StatusFault {
                status,
                remaining: count,
                path_contains,
                retry_after,
            }),
            Fault::DropMidTransfer { count } => faults.drop_transfers += count,
            Fault::DuplicateDeliveries(n) => faults.duplicates = n,
            Fault::DropDeliveries { count } => faults.drop_deliveries += count,
            Fault::DeliveryDelay(d) => faults.delivery_delay = Some(d),
        }
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        *lock(&self.0.faults) = Faults::default();
    }

    /// Every QRS call so far (the xrfkey left out of the path).
    pub fn calls(&self) -> Vec<CallRecord> {
        lock(&self.0.calls).clone()
    }

    /// Forgets the call log.
    pub fn clear_calls(&self) {
        lock(&self.0.calls).clear();
    }

    /// The current change subscriptions.
    pub fn subscriptions(&self) -> Vec<SimSubscription> {
        self.0
            .lock()
            .subscriptions
            .iter()
            .map(notify::Subscription::public)
            .collect()
    }
}

/// Running simulated sites and their admin API.
pub struct Sim {
    dir: PathBuf,
    config_path: PathBuf,
    admin_url: String,
    sites: Vec<SimSite>,
    admin: Option<ServerHandle>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("dir", &self.dir)
            .field("sites", &self.sites)
            .field("admin_url", &self.admin_url)
            .finish()
    }
}

impl Sim {
    /// The generated `promoter.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.config_path.clone()
    }

    /// The simulator's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Base URL of the admin API (`http://127.0.0.1:<port>`).
    pub fn admin_url(&self) -> String {
        self.admin_url.clone()
    }

    /// The site with this alias (case-insensitive).
    pub fn site(&self, alias: &str) -> Option<SimSite> {
        self.sites
            .iter()
            .find(|s| s.alias().eq_ignore_ascii_case(alias))
            .cloned()
    }

    /// Every site, the local one first.
    pub fn sites(&self) -> Vec<SimSite> {
        self.sites.clone()
    }

    /// Stops every listener and delivery task.
    pub async fn shutdown(mut self) {
        let mut handles: Vec<ServerHandle> = self.admin.take().into_iter().collect();
        for s in &self.sites {
            handles.extend(s.0.stop_listener());
            if let Some(w) = lock(&s.0.worker).take() {
                w.abort();
            }
        }
        for h in handles {
            h.stop(false).await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(h) = self.admin.take() {
            drop(h.stop(false));
        }
        for s in &self.sites {
            if let Some(h) = s.0.stop_listener() {
                drop(h.stop(false));
            }
            if let Some(w) = lock(&s.0.worker).take() {
                w.abort();
            }
        }
    }
}

/// A folder name for an alias (aliases may hold any text).
fn folder_name(alias: &str) -> String {
    let s: String = alias
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "site".into() } else { s }
}

/// Starts the simulated sites described by `opts`: certificates, listeners, seeded state, the
/// admin API, `promoter.toml` and `sim.json` in `opts.dir`.
pub async fn start(opts: SimOptions) -> anyhow::Result<Sim> {
    crate::tls::init();
    if opts.sites.is_empty() {
        anyhow::bail!("name at least one site (the first is the local site)");
    }
    let mut seen = std::collections::HashSet::new();
    let mut folders = std::collections::HashSet::new();
    for a in &opts.sites {
        if a.trim().is_empty() {
            anyhow::bail!("a site alias is empty");
        }
        if !seen.insert(a.trim().to_lowercase()) {
            anyhow::bail!("the site alias \"{a}\" is given twice (aliases ignore case)");
        }
        if !folders.insert(folder_name(a.trim())) {
            anyhow::bail!(
                "the site aliases map to the same folder name: {}",
                folder_name(a)
            );
        }
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)
        .with_context(|| format!("cannot resolve {}", opts.dir.display()))?;
    let fixture = match &opts.fixture {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the fixture {}", p.display()))?;
            fixture::Fixture::parse(&text, &p.display().to_string())?
        }
        None => fixture::Fixture::parse(fixture::DEFAULT_FIXTURE, "(built in)")?,
    };
    let aliases: Vec<String> = opts.sites.iter().map(|a| a.trim().to_string()).collect();
    let remotes: Vec<String> = aliases.iter().skip(1).cloned().collect();
    let server_names = match &opts.server_name {
        Some(n) => vec![n.clone()],
        None => vec!["localhost".to_string(), "127.0.0.1".to_string()],
    };
    let rt = tokio::runtime::Handle::current();

    let mut sim = Sim {
        config_path: dir.join("promoter.toml"),
        dir: dir.clone(),
        admin_url: String::new(),
        sites: vec![],
        admin: None,
    };
    for (i, alias) in aliases.iter().enumerate() {
        let folder = folder_name(alias);
        let certs = certs::generate(alias, &server_names)?;
        let cert_dir = dir.join("certificates").join(&folder);
        certs.write(&cert_dir)?;
        let tls = certs.server_config(opts.behaviour.client_cert_required_in_handshake)?;
        let listener = http::bind(0).context("cannot listen on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (tx, worker) =
            notify::spawn_worker(&rt, Arc::clone(&faults), opts.behaviour.delivery_timeout)?;
        let mut st = SiteState::new(alias, opts.behaviour.clone(), tx);
        fixture::seed(&mut st, &fixture, i == 0, &remotes)
            .with_context(|| format!("seeding site {alias}"))?;
        let inner = Arc::new(SiteInner {
            alias: alias.clone(),
            port,
            certificates: cert_dir,
            apps_dir: dir.join("sites").join(&folder).join("apps"),
            behaviour: opts.behaviour.clone(),
            state: Mutex::new(st),
            faults,
            calls: Mutex::new(vec![]),
            server: Mutex::new(None),
            tls,
            rt: rt.clone(),
            worker: Mutex::new(Some(worker)),
        });
        let h = http::serve(&inner, listener)?;
        *lock(&inner.server) = Some(h);
        sim.sites.push(SimSite(inner));
    }
    let (admin, admin_port) = admin::serve(sim.sites.clone(), &rt)?;
    sim.admin = Some(admin);
    sim.admin_url = format!("http://127.0.0.1:{admin_port}");
    setup::write_config(&sim, &opts)?;
    setup::write_sim_json(&sim)?;
    Ok(sim)
}

/// `promoter sim`: starts the simulated sites and runs until Ctrl-C.
pub async fn run_cli(dir: &Path, sites: &[String], fixture: Option<&Path>) -> anyhow::Result<()> {
    let mut opts = SimOptions::new(dir, &[]);
    opts.sites = sites.to_vec();
    opts.fixture = fixture.map(Path::to_path_buf);
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(8585);
    opts.listener_bind = Some(format!("127.0.0.1:{free}"));
    let sim = start(opts).await?;
    println!("Simulated Qlik Sense sites (QRS over mutual TLS):");
    for (i, s) in sim.sites.iter().enumerate() {
        println!(
            "  {:<10} {}  {}  certificates: {}",
            s.alias(),
            if i == 0 { "local " } else { "remote" },
            s.base_url(),
            s.certificates().display()
        );
    }
    println!(
        "Admin API:  {}  (GET {}/sites)",
        sim.admin_url, sim.admin_url
    );
    println!("Config:     {}", sim.config_path.display());
    println!();
    println!("Next, in another terminal:");
    println!("  promoter check --config {}", sim.config_path.display());
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
