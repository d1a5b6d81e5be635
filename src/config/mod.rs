//! Configuration: one TOML file, overridden by `PROMOTER__SECTION__KEY` environment variables.
//!
//! Loading does everything that can fail up front: unknown keys and wrong types are rejected with
//! the key's name, relative paths are resolved against the config file's folder (never the current
//! directory), secrets are read, certificate files are checked, and aliases must be unique.
//! `config/promoter.example.toml` documents every key; keep it in step with this file.

mod secret;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use secret::{Secret, SecretSource};

/// Default config location, relative to the current directory (only for the CLI default).
pub const DEFAULT_CONFIG_PATH: &str = "config/promoter.toml";

/// Everything Promoter reads from its configuration, with paths made absolute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The absolute path of the file this was loaded from.
    #[serde(skip)]
    pub config_path: PathBuf,
    #[serde(default)]
    pub listener: ListenerSettings,
    #[serde(default)]
    pub data: DataSettings,
    /// The source site: the one Promoter watches and exports from.
    pub local: SiteSettings,
    /// The target sites (1..n), chosen by alias in `PromoteToServer`.
    #[serde(default, rename = "remote")]
    pub remotes: Vec<SiteSettings>,
    #[serde(default)]
    pub qrs: QrsSettings,
    #[serde(default)]
    pub properties: PropertyNames,
    #[serde(default)]
    pub promotion: PromotionSettings,
    #[serde(default)]
    pub subscriptions: SubscriptionSettings,
    #[serde(default)]
    pub email: EmailSettings,
    #[serde(default)]
    pub versioning: VersioningSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub logging: LoggingSettings,
}

/// The HTTP listener QRS calls back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerSettings {
    /// Address and port to bind. Loopback by default: QRS on the same server reaches it.
    pub bind: String,
    /// The base URL QRS is told to call (scheme, host, port). Default: `http://<bind>`,
    /// or `https://<bind>` when TLS is on.
    pub public_url: Option<String>,
    /// PEM certificate chain and key for HTTPS on the listener. Both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest accepted callback body, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            bind: "127.0.0.1:8585".into(),
            public_url: None,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl ListenerSettings {
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The URL QRS should call, without a trailing slash. `bound` is the address actually bound
    /// (which differs from `bind` when the port is 0).
    pub fn public_base_url(&self, bound: std::net::SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls_enabled() { "https" } else { "http" };
                let host = if bound.ip().is_unspecified() {
                    "localhost".to_string()
                } else {
                    bound.ip().to_string()
                };
                format!("{scheme}://{host}:{}", bound.port())
            }
        }
    }
}

/// Where Promoter keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    /// Data folder: the SQLite database, temporary transfer files.
    pub dir: PathBuf,
    /// Database URL. Empty: SQLite file `<dir>/promoter.db`. `postgres://...` for PostgreSQL.
    /// Being able to carry a password, it is a secret (inline, `{ file = ... }` or `{ env = ... }`).
    pub database_url: Option<SecretSource>,
    /// Folder for temporary app files during transfers. Default `<dir>/work`.
    pub work_dir: Option<PathBuf>,
    #[serde(skip)]
    pub database: Option<Secret>,
}

impl Default for DataSettings {
    fn default() -> Self {
        DataSettings {
            dir: "data".into(),
            database_url: None,
            work_dir: None,
            database: None,
        }
    }
}

impl DataSettings {
    /// The database URL to connect to (resolved at load time).
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(s) => s.expose().to_string(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.dir.join("promoter.db").display()
            ),
        }
    }

    pub fn is_postgres(&self) -> bool {
        let url = self.database_url();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("work"))
    }
}

/// One Qlik Sense site reached over QRS with certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSettings {
    /// The name used in `PromoteToServer` values (any text, matched case-insensitively).
    pub alias: String,
    /// Host name of the central node.
    pub host: String,
    #[serde(default = "default_qrs_port")]
    pub port: u16,
    /// Folder with `client.pem`, `client_key.pem` and `root.pem` as exported from the QMC.
    pub certificates: PathBuf,
    /// The user QRS calls run as, `DIRECTORY\userid`.
    #[serde(default = "default_qrs_user")]
    pub user: String,
    /// The name the site's server certificate was issued for, when it differs from `host`
    /// (Qlik often issues it to the short host name).
    pub server_name: Option<String>,
    /// Verify the server certificate against `root.pem`. Turning this off is insecure.
    #[serde(default = "default_true")]
    pub verify_tls: bool,
    /// Hub address used in messages. Default `https://<host>/hub`.
    pub hub_url: Option<String>,
    /// QMC address used in messages. Default `https://<host>/qmc`.
    pub qmc_url: Option<String>,
}

fn default_qrs_port() -> u16 {
    4242
}
fn default_qrs_user() -> String {
    "INTERNAL\\sa_api".into()
}
fn default_true() -> bool {
    true
}

impl SiteSettings {
    pub fn client_cert_path(&self) -> PathBuf {
        self.certificates.join("client.pem")
    }
    pub fn client_key_path(&self) -> PathBuf {
        self.certificates.join("client_key.pem")
    }
    pub fn root_cert_path(&self) -> PathBuf {
        self.certificates.join("root.pem")
    }
    /// `(directory, userId)` from `user`.
    pub fn user_parts(&self) -> (&str, &str) {
        match self.user.split_once('\\') {
            Some((d, u)) => (d, u),
            None => ("INTERNAL", self.user.as_str()),
        }
    }
    pub fn hub_url(&self) -> String {
        self.hub_url
            .clone()
            .unwrap_or_else(|| format!("https://{}/hub", self.host))
            .trim_end_matches('/')
            .to_string()
    }
    pub fn qmc_url(&self) -> String {
        self.qmc_url
            .clone()
            .unwrap_or_else(|| format!("https://{}/qmc", self.host))
            .trim_end_matches('/')
            .to_string()
    }
    /// Link to an app in this site's hub (`https://host/sense/app/<id>`).
    pub fn app_url(&self, app_id: &str) -> String {
        let hub = self.hub_url();
        let base = hub.strip_suffix("/hub").unwrap_or(&hub);
        format!("{base}/sense/app/{app_id}")
    }
    pub fn matches_alias(&self, alias: &str) -> bool {
        self.alias.trim().to_lowercase() == alias.trim().to_lowercase()
    }
}

/// Timeouts and retries for every QRS call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QrsSettings {
    pub connect_timeout_seconds: u64,
    /// Ordinary calls (GET, PUT, publish...).
    pub request_timeout_seconds: u64,
    /// App downloads and uploads, which can take long for big apps.
    pub transfer_timeout_seconds: u64,
    /// How often an update is re-read and re-applied after a 409 Conflict.
    pub conflict_retries: u32,
}

impl Default for QrsSettings {
    fn default() -> Self {
        QrsSettings {
            connect_timeout_seconds: 10,
            request_timeout_seconds: 60,
            transfer_timeout_seconds: 3600,
            conflict_retries: 5,
        }
    }
}

/// Names of the custom properties, as defined in the QMC.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PropertyNames {
    pub promote_to_server: String,
    pub promote_to_stream: String,
    pub approval: String,
    pub versioning: String,
    pub unpublish: String,
    pub promote_on_reload: String,
    pub email_alert_on_publish: String,
}

impl Default for PropertyNames {
    fn default() -> Self {
        PropertyNames {
            promote_to_server: "PromoteToServer".into(),
            promote_to_stream: "PromoteToStream".into(),
            approval: "PromotionApproval".into(),
            versioning: "PromotionS3Versioning".into(),
            unpublish: "PromotionUnpublish".into(),
            promote_on_reload: "PromoteOnReload".into(),
            email_alert_on_publish: "EmailAlertOnPublishTo".into(),
        }
    }
}

/// How approvals are read and carried out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromotionSettings {
    /// `PromotionApproval` values that mean approve (case-insensitive, exact).
    pub approve_values: Vec<String>,
    /// `PromotionApproval` values that mean deny (case-insensitive, exact).
    pub deny_values: Vec<String>,
    /// After approval or denial, unpublish the source app (a copy goes back to the owner).
    /// When false, the `PromotionUnpublish` property decides per app, and otherwise the
    /// promotion properties are stripped.
    pub auto_unpublish: bool,
    /// Honour `PromoteOnReload = True`: tag the app and promote it again after every reload.
    pub promote_on_reload: bool,
    /// Tag put on apps that are promoted on reload (created if missing).
    pub reload_tag: String,
    /// Jobs run at the same time (each app has at most one).
    pub workers: usize,
    /// Transfers to one site at the same time.
    pub per_site_concurrency: usize,
    /// Attempts of one step before the job fails for good.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter, up to `retry_max_seconds`.
    pub retry_initial_seconds: u64,
    pub retry_max_seconds: u64,
    /// How long a running job stays reserved for its worker without a renewal. After a crash
    /// its job resumes once this has passed.
    pub lease_seconds: u64,
}

impl Default for PromotionSettings {
    fn default() -> Self {
        PromotionSettings {
            approve_values: vec!["Approve".into(), "Approved".into()],
            deny_values: vec!["Deny".into(), "Denied".into()],
            auto_unpublish: true,
            promote_on_reload: false,
            reload_tag: "PromoteOnReload".into(),
            workers: 4,
            per_site_concurrency: 2,
            max_attempts: 8,
            retry_initial_seconds: 2,
            retry_max_seconds: 300,
            lease_seconds: 60,
        }
    }
}

/// The subscription keeper and the catch-up sweep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionSettings {
    /// How often the keeper checks that QRS still has our subscriptions.
    pub interval_seconds: u64,
    /// How often the local site is swept for apps with promotion properties set.
    pub sweep_interval_seconds: u64,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            interval_seconds: 60,
            sweep_interval_seconds: 900,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MailTransportKind {
    /// Write each message as an `.eml` file into `email.folder`.
    File,
    /// Send through an SMTP server.
    Smtp,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (usually port 587). TLS is required.
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
    /// No encryption (a relay on a trusted network, usually port 25).
    Plain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSettings {
    /// Master switch for every message.
    pub enabled: bool,
    pub transport: MailTransportKind,
    /// Where the file transport writes messages.
    pub folder: PathBuf,
    /// Sender, e.g. `Promoter <promoter@company.com>`.
    pub from: String,
    /// Who gets failure alerts.
    pub admin_recipients: Vec<String>,
    /// Who gets owner mail when the owner has no email attribute.
    pub fallback_recipients: Vec<String>,
    /// CSV mapping a stream id or name to approver addresses (publish alerts).
    pub approvers_csv: Option<PathBuf>,
    /// Folder with template overrides (same file names as the built-in templates).
    pub templates_dir: Option<PathBuf>,
    pub smtp: SmtpSettings,
}

impl Default for EmailSettings {
    fn default() -> Self {
        EmailSettings {
            enabled: false,
            transport: MailTransportKind::File,
            folder: "data/mail".into(),
            from: "Promoter <promoter@localhost>".into(),
            admin_recipients: vec![],
            fallback_recipients: vec![],
            approvers_csv: None,
            templates_dir: None,
            smtp: SmtpSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    pub timeout_seconds: u64,
    /// Extra CA certificate (PEM) to trust for the SMTP server, e.g. an internal CA.
    pub root_ca: Option<PathBuf>,
    #[serde(skip)]
    pub password_value: Option<Secret>,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            host: "localhost".into(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            timeout_seconds: 30,
            root_ca: None,
            password_value: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionBackendKind {
    Folder,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersioningSettings {
    /// Store a no-data copy of apps promoted with `PromotionS3Versioning = True`.
    pub enabled: bool,
    /// Version every promoted app, whatever its property says.
    pub auto: bool,
    pub backend: VersionBackendKind,
    /// Where the folder backend keeps versions.
    pub folder: PathBuf,
    pub s3: S3Settings,
}

impl Default for VersioningSettings {
    fn default() -> Self {
        VersioningSettings {
            enabled: false,
            auto: false,
            backend: VersionBackendKind::Folder,
            folder: "data/versions".into(),
            s3: S3Settings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    /// For S3-compatible stores (MinIO, moto...). Empty: AWS.
    pub endpoint: Option<String>,
    pub path_style: bool,
    /// Both or neither; neither uses the standard AWS credential chain.
    pub access_key_id: Option<SecretSource>,
    pub secret_access_key: Option<SecretSource>,
    #[serde(skip)]
    pub credentials: Option<(Secret, Secret)>,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            bucket: String::new(),
            prefix: "promoter/".into(),
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            credentials: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Folder for the daily CSV audit files the dashboard loads.
    pub folder: PathBuf,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            folder: "data/audit".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a filter like `info,promoter=debug`.
    pub level: String,
    pub format: LogFormat,
    /// Folder for rotating log files. Empty: log to the console only (a service always logs to a
    /// folder: `<data.dir>/logs` when this is empty).
    pub folder: Option<PathBuf>,
    /// Log files kept (one a day).
    pub max_files: usize,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        LoggingSettings {
            level: "info".into(),
            format: LogFormat::Text,
            folder: None,
            max_files: 14,
        }
    }
}

/// One problem in a configuration, naming the key and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read the configuration file {path}: {reason}. Pass --config PATH, or create it from config/promoter.example.toml"
    )]
    Missing { path: PathBuf, reason: String },
    #[error("{path}: {reason}. config/promoter.example.toml documents every key")]
    Parse { path: PathBuf, reason: String },
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{}: {} problem(s) in the configuration:",
        path.display(),
        problems.len()
    );
    for p in problems {
        out.push_str(&format!("\n  - `{}`: {}", p.key, p.message));
    }
    out
}

impl Settings {
    /// Loads, resolves and validates the configuration at `path`, with environment overrides.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, true)
    }

    /// As [`Settings::load`]; `use_env = false` ignores `PROMOTER__*` variables (tests).
    pub fn load_with_env(path: &Path, use_env: bool) -> Result<Settings, ConfigError> {
        let abs = absolute(path);
        let text = std::fs::read_to_string(&abs).map_err(|e| ConfigError::Missing {
            path: abs.clone(),
            reason: e.to_string(),
        })?;
        let mut figment = Figment::new().merge(Toml::string(&text));
        if use_env {
            figment = figment.merge(Env::prefixed("PROMOTER__").split("__"));
        }
        let mut settings: Settings = figment.extract().map_err(|e| ConfigError::Parse {
            path: abs.clone(),
            reason: describe_figment_error(e),
        })?;
        settings.config_path = abs.clone();
        let base = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut problems = settings.resolve(&base);
        problems.extend(settings.validate());
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid {
                path: abs,
                problems,
            })
        }
    }

    /// The folder of the config file; relative paths are resolved against it.
    pub fn config_dir(&self) -> PathBuf {
        self.config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Every site, the local one first.
    pub fn sites(&self) -> impl Iterator<Item = &SiteSettings> {
        std::iter::once(&self.local).chain(self.remotes.iter())
    }

    /// The target sites' aliases, quoted and comma-separated, for messages.
    pub fn remote_aliases_quoted(&self) -> String {
        self.remotes
            .iter()
            .map(|r| format!("\"{}\"", r.alias))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The remote site with this alias (case-insensitive).
    pub fn remote(&self, alias: &str) -> Option<&SiteSettings> {
        self.remotes.iter().find(|s| s.matches_alias(alias))
    }

    /// Any site (local or remote) with this alias (case-insensitive).
    pub fn site(&self, alias: &str) -> Option<&SiteSettings> {
        self.sites().find(|s| s.matches_alias(alias))
    }

    /// Makes paths absolute and reads secrets. Returns the problems found.
    fn resolve(&mut self, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.data.dir);
        if let Some(p) = self.data.work_dir.as_mut() {
            abs(p);
        }
        for p in [&mut self.listener.tls_cert, &mut self.listener.tls_key]
            .into_iter()
            .flatten()
        {
            abs(p);
        }
        abs(&mut self.local.certificates);
        for r in &mut self.remotes {
            abs(&mut r.certificates);
        }
        abs(&mut self.email.folder);
        for p in [
            &mut self.email.approvers_csv,
            &mut self.email.templates_dir,
            &mut self.email.smtp.root_ca,
            &mut self.logging.folder,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        abs(&mut self.versioning.folder);
        abs(&mut self.audit.folder);

        let mut secret = |key: &str, src: &Option<SecretSource>| -> Option<Secret> {
            let src = src.as_ref()?;
            match src.resolve(base) {
                Ok(s) => Some(s),
                Err(message) => {
                    problems.push(Problem {
                        key: key.into(),
                        message,
                    });
                    None
                }
            }
        };
        self.data.database = secret("data.database_url", &self.data.database_url);
        if self
            .data
            .database
            .as_ref()
            .is_some_and(|s| s.expose().trim().is_empty())
        {
            self.data.database = None;
        }
        self.email.smtp.password_value = secret("email.smtp.password", &self.email.smtp.password);
        let key_id = secret(
            "versioning.s3.access_key_id",
            &self.versioning.s3.access_key_id,
        );
        let key = secret(
            "versioning.s3.secret_access_key",
            &self.versioning.s3.secret_access_key,
        );
        self.versioning.s3.credentials = key_id.zip(key);
        problems
    }

    /// Checks what serde cannot: files, uniqueness, combinations.
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |key: String, message: String| problems.push(Problem { key, message });

        if self.remotes.is_empty() {
            push(
                "remote".into(),
                "no target site is configured; add at least one [[remote]] section with alias, host and certificates".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, site) in self.sites().enumerate() {
            // Remote sites are named by alias (or position, 1-based, when it has none): an
            // administrator with five `[[remote]]` sections should not have to count from zero.
            let key = if i == 0 {
                "local".to_string()
            } else if site.alias.trim().is_empty() {
                format!("remote #{i}")
            } else {
                format!("remote \"{}\"", site.alias)
            };
            let alias = site.alias.trim().to_lowercase();
            if alias.is_empty() {
                push(
                    format!("{key}.alias"),
                    "is empty; give the site a name such as \"test\"".into(),
                );
            } else if !seen.insert(alias) {
                push(
                    format!("{key}.alias"),
                    format!(
                        "\"{}\" is used by another site (aliases are compared without regard to case); give each site its own alias",
                        site.alias
                    ),
                );
            }
            if site.host.trim().is_empty() {
                push(
                    format!("{key}.host"),
                    "is empty; set the host name of the site's central node".into(),
                );
            }
            if site.port == 0 {
                push(
                    format!("{key}.port"),
                    "must be a port number (QRS listens on 4242)".into(),
                );
            }
            let mut files = vec![site.client_cert_path(), site.client_key_path()];
            if site.verify_tls {
                files.push(site.root_cert_path());
            }
            let missing: Vec<PathBuf> = files.into_iter().filter(|f| !f.is_file()).collect();
            if let Some((first, rest)) = missing.split_first() {
                let others = rest
                    .iter()
                    .filter_map(|f| f.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>();
                let also = if others.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", and so {} {}",
                        if others.len() == 1 { "is" } else { "are" },
                        others.join(" and ")
                    )
                };
                push(
                    format!("{key}.certificates"),
                    format!(
                        "{} is missing{also}; export the certificates from the QMC of site \"{}\" (Certificates > Export, Platform independent PEM-format, include secret key) and copy client.pem, client_key.pem and root.pem into {}",
                        first.display(),
                        site.alias,
                        site.certificates.display()
                    ),
                );
            }
            if !site.user.contains('\\') {
                push(
                    format!("{key}.user"),
                    format!(
                        "\"{}\" must be DIRECTORY\\userid, for example INTERNAL\\sa_api",
                        site.user
                    ),
                );
            }
        }

        let l = &self.listener;
        if l.bind.parse::<std::net::SocketAddr>().is_err() {
            push(
                "listener.bind".into(),
                format!(
                    "\"{}\" is not an address and port such as 127.0.0.1:8585",
                    l.bind
                ),
            );
        }
        if l.tls_cert.is_some() != l.tls_key.is_some() {
            push(
                "listener.tls_cert".into(),
                "tls_cert and tls_key go together: set both for HTTPS, or neither".into(),
            );
        }
        for (k, p) in [
            ("listener.tls_cert", &l.tls_cert),
            ("listener.tls_key", &l.tls_key),
        ] {
            if let Some(p) = p
                && !p.is_file()
            {
                push(k.into(), format!("{} does not exist", p.display()));
            }
        }
        if let Some(u) = &l.public_url
            && url::Url::parse(u).is_err()
        {
            push(
                "listener.public_url".into(),
                format!("\"{u}\" is not a URL such as http://qlik-dev:8585"),
            );
        }
        if l.max_body_bytes < 1024 {
            push(
                "listener.max_body_bytes".into(),
                "is too small; QRS deliveries need at least a few KiB".into(),
            );
        }

        let url = self.data.database_url();
        if !(url.starts_with("sqlite:") || self.data.is_postgres()) {
            push(
                "data.database_url".into(),
                "must start with postgres:// (or be left out for the embedded SQLite database)"
                    .into(),
            );
        }

        let p = &self.promotion;
        if p.approve_values.iter().all(|v| v.trim().is_empty()) {
            push(
                "promotion.approve_values".into(),
                "needs at least one value, e.g. [\"Approve\"]".into(),
            );
        }
        if p.deny_values.iter().all(|v| v.trim().is_empty()) {
            push(
                "promotion.deny_values".into(),
                "needs at least one value, e.g. [\"Deny\"]".into(),
            );
        }
        for a in &p.approve_values {
            if p.deny_values.iter().any(|d| d.eq_ignore_ascii_case(a)) {
                push(
                    "promotion.deny_values".into(),
                    format!("\"{a}\" is both an approve and a deny value"),
                );
            }
        }
        if p.workers == 0 {
            push("promotion.workers".into(), "must be at least 1".into());
        }
        if p.per_site_concurrency == 0 {
            push(
                "promotion.per_site_concurrency".into(),
                "must be at least 1".into(),
            );
        }
        if p.max_attempts == 0 {
            push("promotion.max_attempts".into(), "must be at least 1".into());
        }
        if p.lease_seconds == 0 {
            push(
                "promotion.lease_seconds".into(),
                "must be at least 1".into(),
            );
        }
        if p.promote_on_reload && p.reload_tag.trim().is_empty() {
            push(
                "promotion.reload_tag".into(),
                "is empty; name the tag put on apps promoted on reload".into(),
            );
        }
        let names = &self.properties;
        for (k, v) in [
            ("properties.promote_to_server", &names.promote_to_server),
            ("properties.promote_to_stream", &names.promote_to_stream),
            ("properties.approval", &names.approval),
        ] {
            if v.trim().is_empty() {
                push(
                    k.into(),
                    "is empty; give the custom property's name as defined in the QMC".into(),
                );
            }
        }

        if self.subscriptions.interval_seconds == 0 {
            push(
                "subscriptions.interval_seconds".into(),
                "must be at least 1 (QRS forgets subscriptions when it restarts)".into(),
            );
        }
        if self.subscriptions.sweep_interval_seconds == 0 {
            push(
                "subscriptions.sweep_interval_seconds".into(),
                "must be at least 1".into(),
            );
        }

        let e = &self.email;
        if e.enabled {
            if !e.from.contains('@') {
                push(
                    "email.from".into(),
                    format!(
                        "\"{}\" is not an address such as Promoter <promoter@company.com>",
                        e.from
                    ),
                );
            }
            if e.transport == MailTransportKind::Smtp && e.smtp.host.trim().is_empty() {
                push(
                    "email.smtp.host".into(),
                    "is empty; name the SMTP server".into(),
                );
            }
            if let Some(csv) = &e.approvers_csv
                && !csv.is_file()
            {
                push(
                    "email.approvers_csv".into(),
                    format!("{} does not exist", csv.display()),
                );
            }
        }
        if e.smtp.password.is_some() && e.smtp.username.is_none() {
            push(
                "email.smtp.username".into(),
                "a password is set but no username; set both for SMTP AUTH".into(),
            );
        }

        let v = &self.versioning;
        if v.enabled && v.backend == VersionBackendKind::S3 && v.s3.bucket.trim().is_empty() {
            push(
                "versioning.s3.bucket".into(),
                "is empty; name the bucket (with versioning enabled) that keeps app versions"
                    .into(),
            );
        }
        if v.s3.access_key_id.is_some() != v.s3.secret_access_key.is_some() {
            push(
                "versioning.s3.access_key_id".into(),
                "access_key_id and secret_access_key go together; set both, or neither to use the standard AWS credential chain".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            push(
                "logging.level".into(),
                format!(
                    "\"{}\" is not a log level ({e}); use error, warn, info, debug or trace",
                    self.logging.level
                ),
            );
        }
        problems
    }

    /// Warnings to print at every start (insecure choices).
    pub fn warnings(&self) -> Vec<String> {
        self.sites()
            .filter(|s| !s.verify_tls)
            .map(|s| {
                format!(
                    "TLS verification is OFF for site \"{}\" ({}): anyone on the network path can impersonate it and receive app exports. Put the site's root.pem in {} and remove verify_tls = false",
                    s.alias,
                    s.host,
                    s.certificates.display()
                )
            })
            .collect()
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Figment's errors already name the key; make them one readable sentence per error.
fn describe_figment_error(e: figment::Error) -> String {
    let mut parts = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let msg = match &err.kind {
            figment::error::Kind::UnknownField(field, expected) => format!(
                "unknown key `{}` (known keys here: {})",
                field,
                expected.join(", ")
            ),
            figment::error::Kind::MissingField(field) => {
                if key.is_empty() {
                    format!("the required key `{field}` is missing")
                } else {
                    format!("the required key `{key}.{field}` is missing")
                }
            }
            other => {
                if key.is_empty() {
                    other.to_string()
                } else {
                    format!("`{key}`: {other}")
                }
            }
        };
        let msg = if let figment::error::Kind::UnknownField(..) = err.kind
            && !key.is_empty()
        {
            format!("in [{key}]: {msg}")
        } else {
            msg
        };
        parts.push(msg);
    }
    parts.join("; ")
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

#[cfg(test)]
mod tests;
