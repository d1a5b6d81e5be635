//! The entities of one simulated site and every change made to them.
//!
//! All changes go through [`SiteState`] methods, which bump `modifiedDate` (strictly increasing
//! per site), record who made them, and emit a [`Change`] that the subscriptions see.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use super::Behaviour;
use super::content::{Content, ContentData, seed_of};
use super::filter;
use super::notify::{Change, Delivery, Subscription};

/// QRS's "unset" date.
pub const UNSET_DATE: &str = "1753-01-01T00:00:00.000Z";
/// QRS's empty reference.
pub const EMPTY_GUID: &str = "00000000-0000-0000-0000-000000000000";
/// The identity of calls without `X-Qlik-User` (full administrator rights).
pub const SYSTEM_USER: &str = "INTERNAL\\sa_repository";
const PRODUCT_VERSION: &str = "12.1477.2";
/// Characters escaped in the file name of a download path (RFC 3986 unreserved ones are kept).
const PATH_SEGMENT: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// ISO 8601 UTC with milliseconds, as QRS writes dates.
pub fn fmt_date(d: DateTime<Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Why an operation failed; maps to a QRS status and plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    Status(u16, String),
}

impl OpError {
    pub fn status(&self) -> u16 {
        match self {
            OpError::NotFound(_) => 404,
            OpError::BadRequest(_) => 400,
            OpError::Conflict(_) => 409,
            OpError::Status(s, _) => *s,
        }
    }
    pub fn text(&self) -> &str {
        match self {
            OpError::NotFound(t)
            | OpError::BadRequest(t)
            | OpError::Conflict(t)
            | OpError::Status(_, t) => t,
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status(), self.text())
    }
}

impl std::error::Error for OpError {}

type OpResult<T> = Result<T, OpError>;

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub user_id: String,
    pub user_directory: String,
    pub name: String,
    pub emails: Vec<String>,
}

impl User {
    /// `DIRECTORY\userid`.
    pub fn qualified(&self) -> String {
        format!("{}\\{}", self.user_directory, self.user_id)
    }
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub id: String,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub modified_by: String,
    pub name: String,
    pub owner_id: String,
    pub custom_properties: Vec<CpValue>,
    pub tag_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Tag {
    pub id: String,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub modified_by: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct CpDef {
    pub id: String,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub modified_by: String,
    pub name: String,
    pub choice_values: Vec<String>,
    pub object_types: Vec<String>,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct CpValue {
    pub id: String,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub modified_by: String,
    pub def_id: String,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub modified_by: String,
    pub name: String,
    pub description: String,
    pub owner_id: String,
    pub stream_id: Option<String>,
    pub published: bool,
    pub publish_time: Option<DateTime<Utc>>,
    pub custom_properties: Vec<CpValue>,
    pub tag_ids: Vec<String>,
    pub last_reload_time: DateTime<Utc>,
    pub content: Content,
    pub reloads: u64,
}

/// A finished export waiting for its one download.
#[derive(Debug, Clone)]
pub struct Export {
    pub user: String,
    pub content: Content,
    pub len: u64,
    pub used: bool,
}

/// Bytes of a `skipData=true` export of `size` bytes: a tenth, at least 64 KiB (all of a small
/// app).
pub fn nodata_len(size: u64) -> u64 {
    const MIN: u64 = 64 * 1024;
    if size <= MIN {
        size
    } else {
        (size / 10).max(MIN)
    }
}

/// One site's entities, subscriptions and exports.
pub struct SiteState {
    pub alias: String,
    pub node_id: String,
    pub started_at: DateTime<Utc>,
    last_tick: DateTime<Utc>,
    pub behaviour: Behaviour,
    pub apps: Vec<App>,
    pub streams: Vec<Stream>,
    pub users: Vec<User>,
    pub tags: Vec<Tag>,
    pub defs: Vec<CpDef>,
    pub subscriptions: Vec<Subscription>,
    pub exports: HashMap<String, Export>,
    outbox: tokio::sync::mpsc::UnboundedSender<Delivery>,
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// Splits `DIRECTORY\userid` (no backslash: directory `INTERNAL`).
pub fn split_user(qualified: &str) -> (String, String) {
    match qualified.split_once('\\') {
        Some((d, u)) => (d.trim().to_string(), u.trim().to_string()),
        None => ("INTERNAL".to_string(), qualified.trim().to_string()),
    }
}

impl SiteState {
    pub fn new(
        alias: &str,
        behaviour: Behaviour,
        outbox: tokio::sync::mpsc::UnboundedSender<Delivery>,
    ) -> Self {
        let now = Utc::now();
        SiteState {
            alias: alias.to_string(),
            node_id: new_id(),
            started_at: now,
            last_tick: now,
            behaviour,
            apps: vec![],
            streams: vec![],
            users: vec![],
            tags: vec![],
            defs: vec![],
            subscriptions: vec![],
            exports: HashMap::new(),
            outbox,
        }
    }

    /// A new `modifiedDate`: now, at millisecond precision, strictly after the previous one.
    pub fn tick(&mut self) -> DateTime<Utc> {
        let now = Utc
            .timestamp_millis_opt(Utc::now().timestamp_millis())
            .single()
            .unwrap_or_else(Utc::now);
        let next = if now > self.last_tick {
            now
        } else {
            self.last_tick + chrono::Duration::milliseconds(1)
        };
        self.last_tick = next;
        next
    }

    /// Forgets subscriptions, as a restarted QRS does (entities and pending exports stay).
    pub fn restart(&mut self) {
        self.subscriptions.clear();
        self.started_at = Utc::now();
    }

    // ---------------------------------------------------------------- lookups

    pub fn app(&self, id: &str) -> OpResult<&App> {
        self.apps
            .iter()
            .find(|a| eq_ci(&a.id, id))
            .ok_or_else(|| OpError::NotFound(format!("App with id {id} not found")))
    }

    fn app_index(&self, id: &str) -> OpResult<usize> {
        self.apps
            .iter()
            .position(|a| eq_ci(&a.id, id))
            .ok_or_else(|| OpError::NotFound(format!("App with id {id} not found")))
    }

    pub fn stream_by_id(&self, id: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| eq_ci(&s.id, id))
    }

    pub fn stream_by_name(&self, name: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| eq_ci(&s.name, name))
    }

    pub fn user_by_id(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| eq_ci(&u.id, id))
    }

    pub fn user_by_name(&self, dir: &str, uid: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| eq_ci(&u.user_directory, dir) && eq_ci(&u.user_id, uid))
    }

    pub fn def_by_id(&self, id: &str) -> Option<&CpDef> {
        self.defs.iter().find(|d| eq_ci(&d.id, id))
    }

    pub fn def_by_name(&self, name: &str) -> Option<&CpDef> {
        self.defs.iter().find(|d| eq_ci(&d.name, name))
    }

    pub fn tag_by_id(&self, id: &str) -> Option<&Tag> {
        self.tags.iter().find(|t| eq_ci(&t.id, id))
    }

    /// The user `DIRECTORY\userid`, created when QRS has not seen it yet.
    pub fn ensure_user(&mut self, qualified: &str) -> String {
        let (dir, uid) = split_user(qualified);
        if let Some(u) = self.user_by_name(&dir, &uid) {
            return u.id.clone();
        }
        let now = self.tick();
        let user = User {
            id: new_id(),
            created: now,
            modified: now,
            user_id: uid.clone(),
            user_directory: dir,
            name: uid,
            emails: vec![],
        };
        let id = user.id.clone();
        self.users.push(user);
        self.emit(Change::new("User", &id, 1, vec![], now, None));
        id
    }

    // ---------------------------------------------------------------- JSON

    fn user_condensed(&self, id: &str) -> Value {
        match self.user_by_id(id) {
            Some(u) => json!({
                "id": u.id, "userId": u.user_id, "userDirectory": u.user_directory,
                "userDirectoryConnectorName": u.user_directory, "name": u.name, "privileges": null
            }),
            None => Value::Null,
        }
    }

    fn cp_json(&self, v: &CpValue) -> Value {
        let def = self.def_by_id(&v.def_id);
        json!({
            "id": v.id,
            "createdDate": fmt_date(v.created),
            "modifiedDate": fmt_date(v.modified),
            "modifiedByUserName": v.modified_by,
            "value": v.value,
            "definition": {
                "id": v.def_id,
                "name": def.map(|d| d.name.clone()).unwrap_or_default(),
                "valueType": "Text",
                "choiceValues": def.map(|d| d.choice_values.clone()).unwrap_or_default(),
                "privileges": null
            },
            "schemaPath": "CustomPropertyValue"
        })
    }

    fn tags_json(&self, ids: &[String]) -> Value {
        Value::Array(
            ids.iter()
                .filter_map(|id| self.tag_by_id(id))
                .map(|t| json!({"id": t.id, "name": t.name, "privileges": null}))
                .collect(),
        )
    }

    fn stream_ref(&self, id: &Option<String>) -> Value {
        match id.as_deref().and_then(|id| self.stream_by_id(id)) {
            Some(s) => json!({"id": s.id, "name": s.name, "privileges": null}),
            None => Value::Null,
        }
    }

    /// The App entity, full or condensed.
    pub fn app_json(&self, a: &App, full: bool) -> Value {
        let publish_time = a.publish_time.map(fmt_date).unwrap_or(UNSET_DATE.into());
        let migration = &seed_of(&a.id).to_string();
        if !full {
            return json!({
                "id": a.id, "name": a.name, "appId": "", "publishTime": publish_time,
                "published": a.published, "stream": self.stream_ref(&a.stream_id),
                "savedInProductVersion": PRODUCT_VERSION, "migrationHash": migration,
                "availabilityStatus": 0, "privileges": null
            });
        }
        json!({
            "id": a.id,
            "createdDate": fmt_date(a.created),
            "modifiedDate": fmt_date(a.modified),
            "modifiedByUserName": a.modified_by,
            "customProperties": a.custom_properties.iter().map(|v| self.cp_json(v)).collect::<Vec<_>>(),
            "owner": self.user_condensed(&a.owner_id),
            "name": a.name,
            "appId": "",
            "sourceAppId": EMPTY_GUID,
            "targetAppId": EMPTY_GUID,
            "publishTime": publish_time,
            "published": a.published,
            "tags": self.tags_json(&a.tag_ids),
            "description": a.description,
            "stream": self.stream_ref(&a.stream_id),
            "fileSize": a.content.size(),
            "lastReloadTime": fmt_date(a.last_reload_time),
            "thumbnail": "",
            "savedInProductVersion": PRODUCT_VERSION,
            "migrationHash": migration,
            "dynamicColor": "",
            "availabilityStatus": 0,
            "lastDataDistribution": UNSET_DATE,
            "staticByteSize": 0,
            "privileges": null,
            "schemaPath": "App"
        })
    }

    /// The app as filters see it: references expanded (`stream.customProperties...`).
    pub fn app_filter_json(&self, a: &App) -> Value {
        let mut v = self.app_json(a, true);
        if let Some(s) = a.stream_id.as_deref().and_then(|id| self.stream_by_id(id)) {
            v["stream"] = self.stream_json(s, true);
        }
        v
    }

    pub fn stream_json(&self, s: &Stream, full: bool) -> Value {
        if !full {
            return json!({"id": s.id, "name": s.name, "privileges": null});
        }
        json!({
            "id": s.id,
            "createdDate": fmt_date(s.created),
            "modifiedDate": fmt_date(s.modified),
            "modifiedByUserName": s.modified_by,
            "customProperties": s.custom_properties.iter().map(|v| self.cp_json(v)).collect::<Vec<_>>(),
            "owner": self.user_condensed(&s.owner_id),
            "name": s.name,
            "tags": self.tags_json(&s.tag_ids),
            "privileges": null,
            "schemaPath": "Stream"
        })
    }

    pub fn user_json(&self, u: &User, full: bool) -> Value {
        if !full {
            return json!({
                "id": u.id, "userId": u.user_id, "userDirectory": u.user_directory,
                "userDirectoryConnectorName": u.user_directory, "name": u.name, "privileges": null
            });
        }
        json!({
            "id": u.id,
            "createdDate": fmt_date(u.created),
            "modifiedDate": fmt_date(u.modified),
            "modifiedByUserName": SYSTEM_USER,
            "customProperties": [],
            "userId": u.user_id,
            "userDirectory": u.user_directory,
            "userDirectoryConnectorName": u.user_directory,
            "name": u.name,
            "roles": [],
            "attributes": u.emails.iter().map(|e| json!({
                "id": new_id(), "createdDate": fmt_date(u.created), "modifiedDate": fmt_date(u.modified),
                "modifiedByUserName": SYSTEM_USER, "attributeType": "Email", "attributeValue": e,
                "externalId": "", "schemaPath": "UserAttribute"
            })).collect::<Vec<_>>(),
            "inactive": false,
            "removedExternally": false,
            "blacklisted": false,
            "deleteProhibited": false,
            "tags": [],
            "favorites": [],
            "privileges": null,
            "schemaPath": "User"
        })
    }

    pub fn tag_json(&self, t: &Tag, full: bool) -> Value {
        if !full {
            return json!({"id": t.id, "name": t.name, "privileges": null});
        }
        json!({
            "id": t.id,
            "createdDate": fmt_date(t.created),
            "modifiedDate": fmt_date(t.modified),
            "modifiedByUserName": t.modified_by,
            "name": t.name,
            "privileges": null,
            "schemaPath": "Tag"
        })
    }

    pub fn def_json(&self, d: &CpDef, full: bool) -> Value {
        if !full {
            return json!({
                "id": d.id, "name": d.name, "valueType": "Text",
                "choiceValues": d.choice_values, "privileges": null
            });
        }
        json!({
            "id": d.id,
            "createdDate": fmt_date(d.created),
            "modifiedDate": fmt_date(d.modified),
            "modifiedByUserName": d.modified_by,
            "name": d.name,
            "valueType": "Text",
            "choiceValues": d.choice_values,
            "objectTypes": d.object_types,
            "description": d.description,
            "impactSecurityAccess": false,
            "privileges": null,
            "schemaPath": "CustomPropertyDefinition"
        })
    }

    /// `GET /qrs/about` (plus the non-standard `simulatorStartTime`, which changes on restart).
    pub fn about_json(&self) -> Value {
        json!({
            "buildVersion": "30.3.1.0",
            "buildDate": "9/20/2024 12:00:00 AM",
            "databaseProvider": "Devart.Data.PostgreSql",
            "nodeType": 1,
            "sharedPersistence": true,
            "requiresBootstrap": false,
            "singleNodeOnly": false,
            "schemaPath": "About",
            "simulatorStartTime": fmt_date(self.started_at)
        })
    }

    /// Entities of one type as JSON, filtered. `kind` is the lower-case QRS type name.
    pub fn list(
        &self,
        kind: &str,
        full: bool,
        filter: Option<&filter::Expr>,
    ) -> Option<Vec<Value>> {
        let keep = |v: &Value| filter.is_none_or(|f| filter::matches(f, v));
        let out = match kind {
            "app" => self
                .apps
                .iter()
                .filter(|a| keep(&self.app_filter_json(a)))
                .map(|a| self.app_json(a, full))
                .collect(),
            "stream" => self
                .streams
                .iter()
                .filter(|s| keep(&self.stream_json(s, true)))
                .map(|s| self.stream_json(s, full))
                .collect(),
            "user" => self
                .users
                .iter()
                .filter(|u| keep(&self.user_json(u, true)))
                .map(|u| self.user_json(u, full))
                .collect(),
            "tag" => self
                .tags
                .iter()
                .filter(|t| keep(&self.tag_json(t, true)))
                .map(|t| self.tag_json(t, full))
                .collect(),
            "custompropertydefinition" => self
                .defs
                .iter()
                .filter(|d| keep(&self.def_json(d, true)))
                .map(|d| self.def_json(d, full))
                .collect(),
            _ => return None,
        };
        Some(out)
    }

    /// One entity by id as full JSON.
    pub fn get(&self, kind: &str, id: &str) -> Option<OpResult<Value>> {
        let nf = |what: &str| Err(OpError::NotFound(format!("{what} with id {id} not found")));
        Some(match kind {
            "app" => self.app(id).map(|a| self.app_json(a, true)),
            "stream" => self
                .stream_by_id(id)
                .map_or_else(|| nf("Stream"), |s| Ok(self.stream_json(s, true))),
            "user" => self
                .user_by_id(id)
                .map_or_else(|| nf("User"), |u| Ok(self.user_json(u, true))),
            "tag" => self
                .tag_by_id(id)
                .map_or_else(|| nf("Tag"), |t| Ok(self.tag_json(t, true))),
            "custompropertydefinition" => self.def_by_id(id).map_or_else(
                || nf("CustomPropertyDefinition"),
                |d| Ok(self.def_json(d, true)),
            ),
            _ => return None,
        })
    }

    // ---------------------------------------------------------------- notifications

    /// Sends `change` to every matching subscription.
    pub fn emit(&mut self, change: Change) {
        let entity = if change.change_type == 3 {
            None
        } else {
            match change.object_type {
                "App" => self
                    .app(&change.object_id)
                    .ok()
                    .map(|a| self.app_filter_json(a)),
                "Stream" => self
                    .stream_by_id(&change.object_id)
                    .map(|s| self.stream_json(s, true)),
                "Tag" => self
                    .tag_by_id(&change.object_id)
                    .map(|t| self.tag_json(t, true)),
                "User" => self
                    .user_by_id(&change.object_id)
                    .map(|u| self.user_json(u, true)),
                _ => None,
            }
        };
        for sub in &self.subscriptions {
            if sub.wants(&change, entity.as_ref(), self.behaviour.spurious_updates) {
                let _ = self.outbox.send(Delivery {
                    url: sub.url.clone(),
                    body: change.body(&self.node_id),
                });
            }
        }
    }

    // ---------------------------------------------------------------- creation (fixture, admin)

    pub fn add_stream(&mut self, name: &str, actor: &str) -> String {
        let owner_id = self.ensure_user(actor);
        let now = self.tick();
        let s = Stream {
            id: new_id(),
            created: now,
            modified: now,
            modified_by: actor.to_string(),
            name: name.to_string(),
            owner_id,
            custom_properties: vec![],
            tag_ids: vec![],
        };
        let id = s.id.clone();
        self.streams.push(s);
        self.emit(Change::new("Stream", &id, 1, vec![], now, None));
        id
    }

    pub fn add_user(&mut self, dir: &str, uid: &str, name: &str, emails: Vec<String>) -> String {
        let id = self.ensure_user(&format!("{dir}\\{uid}"));
        if let Some(u) = self.users.iter_mut().find(|u| u.id == id) {
            u.name = name.to_string();
            u.emails = emails;
        }
        id
    }

    pub fn add_def(
        &mut self,
        name: &str,
        choice_values: Vec<String>,
        object_types: Vec<String>,
        description: &str,
    ) -> String {
        let now = self.tick();
        let d = CpDef {
            id: new_id(),
            created: now,
            modified: now,
            modified_by: SYSTEM_USER.into(),
            name: name.to_string(),
            choice_values,
            object_types,
            description: description.to_string(),
        };
        let id = d.id.clone();
        self.defs.push(d);
        id
    }

    /// Sets a stream's custom properties (seeding).
    pub fn set_stream_properties(
        &mut self,
        stream_id: &str,
        props: &[(String, String)],
    ) -> OpResult<()> {
        let mut values = Vec::new();
        let now = self.tick();
        for (name, value) in props {
            let d = self
                .def_by_name(name)
                .ok_or_else(|| OpError::NotFound(format!("Custom property {name} not defined")))?;
            values.push(CpValue {
                id: new_id(),
                created: now,
                modified: now,
                modified_by: SYSTEM_USER.into(),
                def_id: d.id.clone(),
                value: value.clone(),
            });
        }
        let s = self
            .streams
            .iter_mut()
            .find(|s| eq_ci(&s.id, stream_id))
            .ok_or_else(|| OpError::NotFound(format!("Stream with id {stream_id} not found")))?;
        s.custom_properties = values;
        Ok(())
    }

    /// Sets an app's description and tags (by name, created when missing) without a change
    /// notification (seeding).
    pub fn set_app_details(&mut self, app_id: &str, description: &str, tags: &[String]) {
        let mut ids = Vec::new();
        for t in tags {
            let id = match self.tags.iter().find(|x| eq_ci(&x.name, t)) {
                Some(x) => x.id.clone(),
                None => match self.create_tag(t, SYSTEM_USER) {
                    Ok(v) => v["id"].as_str().unwrap_or_default().to_string(),
                    Err(_) => continue,
                },
            };
            ids.push(id);
        }
        if let Ok(i) = self.app_index(app_id) {
            self.apps[i].description = description.to_string();
            self.apps[i].tag_ids = ids;
        }
    }

    /// `POST /qrs/tag`.
    pub fn create_tag(&mut self, name: &str, actor: &str) -> OpResult<Value> {
        if name.trim().is_empty() {
            return Err(OpError::BadRequest("Tag name must not be empty".into()));
        }
        if self.tags.iter().any(|t| eq_ci(&t.name, name)) {
            return Err(OpError::Conflict(format!(
                "A tag named {name} already exists"
            )));
        }
        let now = self.tick();
        let t = Tag {
            id: new_id(),
            created: now,
            modified: now,
            modified_by: actor.into(),
            name: name.to_string(),
        };
        let v = self.tag_json(&t, true);
        let id = t.id.clone();
        self.tags.push(t);
        self.emit(Change::new("Tag", &id, 1, vec![], now, None));
        Ok(v)
    }

    /// `POST /qrs/stream`.
    pub fn create_stream(&mut self, name: &str, actor: &str) -> OpResult<Value> {
        if name.trim().is_empty() {
            return Err(OpError::BadRequest("Stream name must not be empty".into()));
        }
        let id = self.add_stream(name, actor);
        Ok(self
            .stream_by_id(&id)
            .map(|s| self.stream_json(s, true))
            .unwrap_or(Value::Null))
    }

    /// Adds an app with synthetic content of `size` bytes, as if uploaded and reloaded.
    pub fn add_app(
        &mut self,
        name: &str,
        size: u64,
        owner: &str,
        stream: Option<&str>,
    ) -> OpResult<String> {
        let stream_id = match stream {
            Some(s) => Some(
                self.stream_by_name(s)
                    .or_else(|| self.stream_by_id(s))
                    .ok_or_else(|| OpError::NotFound(format!("Stream {s} not found")))?
                    .id
                    .clone(),
            ),
            None => None,
        };
        let owner_id = self.ensure_user(owner);
        let now = self.tick();
        let id = new_id();
        let app = App {
            id: id.clone(),
            created: now,
            modified: now,
            modified_by: owner.to_string(),
            name: name.to_string(),
            description: String::new(),
            owner_id,
            published: stream_id.is_some(),
            publish_time: stream_id.as_ref().map(|_| now),
            stream_id,
            custom_properties: vec![],
            tag_ids: vec![],
            last_reload_time: now,
            content: ContentData::synthetic(seed_of(&id), size, now),
            reloads: 0,
        };
        self.apps.push(app);
        self.emit(Change::new("App", &id, 1, vec![], now, None));
        Ok(id)
    }

    /// `POST /qrs/app/upload`: a new unpublished app owned by the caller.
    pub fn upload(
        &mut self,
        name: &str,
        content: Content,
        reload_time: Option<DateTime<Utc>>,
        actor: &str,
    ) -> Value {
        let owner_id = self.ensure_user(actor);
        let now = self.tick();
        let id = new_id();
        let app = App {
            id: id.clone(),
            created: now,
            modified: now,
            modified_by: actor.to_string(),
            name: name.to_string(),
            description: String::new(),
            owner_id,
            stream_id: None,
            published: false,
            publish_time: None,
            custom_properties: vec![],
            tag_ids: vec![],
            last_reload_time: reload_time.unwrap_or(now),
            content,
            reloads: 0,
        };
        let v = self.app_json(&app, true);
        self.apps.push(app);
        self.emit(Change::new("App", &id, 1, vec![], now, None));
        v
    }

    // ---------------------------------------------------------------- app operations

    /// Replaces the values of the named properties (several values: the name several times).
    pub fn set_custom_properties(
        &mut self,
        app_id: &str,
        props: &[(&str, &str)],
        actor: &str,
    ) -> OpResult<()> {
        let idx = self.app_index(app_id)?;
        let mut defs = Vec::new();
        for (name, value) in props {
            let d = self
                .def_by_name(name)
                .ok_or_else(|| OpError::NotFound(format!("Custom property {name} not defined")))?;
            defs.push((d.id.clone(), value.to_string()));
        }
        self.ensure_user(actor);
        let now = self.tick();
        let app = &mut self.apps[idx];
        app.custom_properties
            .retain(|v| !defs.iter().any(|(d, _)| *d == v.def_id));
        for (def_id, value) in defs {
            app.custom_properties.push(CpValue {
                id: new_id(),
                created: now,
                modified: now,
                modified_by: actor.into(),
                def_id,
                value,
            });
        }
        app.modified = now;
        app.modified_by = actor.into();
        let id = app.id.clone();
        self.emit(Change::new(
            "App",
            &id,
            2,
            vec!["customProperties".into(), "modifiedDate".into()],
            now,
            None,
        ));
        Ok(())
    }

    /// Removes every value of the named properties.
    pub fn clear_custom_properties(
        &mut self,
        app_id: &str,
        names: &[&str],
        actor: &str,
    ) -> OpResult<()> {
        let idx = self.app_index(app_id)?;
        let ids: Vec<String> = names
            .iter()
            .filter_map(|n| self.def_by_name(n).map(|d| d.id.clone()))
            .collect();
        self.ensure_user(actor);
        let now = self.tick();
        let app = &mut self.apps[idx];
        app.custom_properties.retain(|v| !ids.contains(&v.def_id));
        app.modified = now;
        app.modified_by = actor.into();
        let id = app.id.clone();
        self.emit(Change::new(
            "App",
            &id,
            2,
            vec!["customProperties".into(), "modifiedDate".into()],
            now,
            None,
        ));
        Ok(())
    }

    /// `PUT /qrs/app/{id}/publish?stream=&name=`.
    pub fn publish(
        &mut self,
        app_id: &str,
        stream: &str,
        name: Option<&str>,
        actor: &str,
    ) -> OpResult<Value> {
        let idx = self.app_index(app_id)?;
        let stream_id = self
            .stream_by_id(stream)
            .or_else(|| self.stream_by_name(stream))
            .ok_or_else(|| OpError::NotFound(format!("Stream with id {stream} not found")))?
            .id
            .clone();
        if self.apps[idx].published {
            return Err(OpError::Status(
                self.behaviour.publish_published_status,
                "The app is already published. To publish it to another stream, make a copy first"
                    .into(),
            ));
        }
        self.ensure_user(actor);
        let now = self.tick();
        let app = &mut self.apps[idx];
        app.published = true;
        app.publish_time = Some(now);
        app.stream_id = Some(stream_id);
        let mut changed = vec![
            "published".to_string(),
            "publishTime".into(),
            "stream".into(),
            "modifiedDate".into(),
        ];
        if let Some(n) = name.filter(|n| !n.is_empty() && *n != app.name) {
            app.name = n.to_string();
            changed.push("name".into());
        }
        app.modified = now;
        app.modified_by = actor.into();
        let id = app.id.clone();
        self.emit(Change::new("App", &id, 2, changed, now, None));
        Ok(self.app_json(&self.apps[idx], true))
    }

    /// `PUT /qrs/app/{id}/replace?app={target}`: the target keeps its id, stream, name, owner and
    /// properties, and gets the source's content and last reload time.
    pub fn replace(&mut self, source_id: &str, target_id: &str, actor: &str) -> OpResult<Value> {
        let src = self.app(source_id)?;
        let (content, reload) = (src.content.clone(), src.last_reload_time);
        let idx = self.app_index(target_id)?;
        self.ensure_user(actor);
        let now = self.tick();
        let t = &mut self.apps[idx];
        t.content = content;
        t.last_reload_time = reload;
        t.modified = now;
        t.modified_by = actor.into();
        let id = t.id.clone();
        self.emit(Change::new(
            "App",
            &id,
            2,
            vec![
                "fileSize".into(),
                "lastReloadTime".into(),
                "modifiedDate".into(),
            ],
            now,
            None,
        ));
        Ok(self.app_json(&self.apps[idx], true))
    }

    /// `POST /qrs/app/{id}/copy?name=`: unpublished, owned by the caller.
    pub fn copy(
        &mut self,
        app_id: &str,
        name: Option<&str>,
        include_properties: bool,
        actor: &str,
    ) -> OpResult<Value> {
        let src = self.app(app_id)?.clone();
        let owner_id = self.ensure_user(actor);
        let now = self.tick();
        let id = new_id();
        let keep = include_properties || !self.behaviour.copy_properties_only_when_asked;
        let app = App {
            id: id.clone(),
            created: now,
            modified: now,
            modified_by: actor.into(),
            name: name
                .filter(|n| !n.is_empty())
                .unwrap_or(&src.name)
                .to_string(),
            description: src.description.clone(),
            owner_id,
            stream_id: None,
            published: false,
            publish_time: None,
            custom_properties: if keep {
                src.custom_properties
                    .iter()
                    .map(|v| CpValue {
                        id: new_id(),
                        created: now,
                        modified: now,
                        modified_by: actor.into(),
                        ..v.clone()
                    })
                    .collect()
            } else {
                vec![]
            },
            tag_ids: if keep { src.tag_ids.clone() } else { vec![] },
            last_reload_time: src.last_reload_time,
            content: src.content.clone(),
            reloads: 0,
        };
        let v = self.app_json(&app, true);
        self.apps.push(app);
        self.emit(Change::new("App", &id, 1, vec![], now, None));
        Ok(v)
    }

    /// `DELETE /qrs/app/{id}`.
    pub fn delete_app(&mut self, app_id: &str) -> OpResult<()> {
        let idx = self.app_index(app_id)?;
        let app = self.apps.remove(idx);
        let now = self.tick();
        self.emit(Change::new("App", &app.id, 3, vec![], now, None));
        Ok(())
    }

    /// `POST /qrs/app/{id}/reload` (and the admin reload): new data, new `lastReloadTime`.
    pub fn reload(&mut self, app_id: &str, actor: &str) -> OpResult<()> {
        let idx = self.app_index(app_id)?;
        self.ensure_user(actor);
        let now = self.tick();
        let app = &mut self.apps[idx];
        app.reloads += 1;
        app.last_reload_time = now;
        app.content = ContentData::synthetic(
            seed_of(&format!("{}#{}", app.id, app.reloads)),
            app.content.size(),
            now,
        );
        app.modified = now;
        app.modified_by = actor.into();
        let id = app.id.clone();
        self.emit(Change::new(
            "App",
            &id,
            2,
            vec!["lastReloadTime".into(), "modifiedDate".into()],
            now,
            Some(new_id()),
        ));
        Ok(())
    }

    /// `PUT /qrs/app/{id}` with optimistic concurrency on `modifiedDate`.
    pub fn update_app(&mut self, app_id: &str, body: &Value, actor: &str) -> OpResult<Value> {
        let idx = self.app_index(app_id)?;
        let body = body
            .as_object()
            .ok_or_else(|| OpError::BadRequest("The body must be an App entity".into()))?;
        let stored = self.apps[idx].clone();
        match body.get("id").and_then(Value::as_str) {
            Some(id) if eq_ci(id, &stored.id) => {}
            _ => {
                return Err(OpError::BadRequest(
                    "The entity ID of the body and of the URL must match".into(),
                ));
            }
        }
        let supplied = body
            .get("modifiedDate")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc));
        match supplied {
            Some(s) if s.timestamp_millis() >= stored.modified.timestamp_millis() => {}
            _ => {
                return Err(OpError::Conflict(format!(
                    "Conflict: the entity App {} was modified at {} by {}",
                    stored.id,
                    fmt_date(stored.modified),
                    stored.modified_by
                )));
            }
        }
        let mut next = stored.clone();
        let mut changed: Vec<String> = Vec::new();
        if let Some(n) = body.get("name").and_then(Value::as_str)
            && n != stored.name
        {
            next.name = n.to_string();
            changed.push("name".into());
        }
        if let Some(d) = body.get("description") {
            let d = d.as_str().unwrap_or_default();
            if d != stored.description {
                next.description = d.to_string();
                changed.push("description".into());
            }
        }
        if let Some(o) = body.get("owner").filter(|o| !o.is_null()) {
            let owner = if let Some(id) = o.get("id").and_then(Value::as_str) {
                self.user_by_id(id)
            } else {
                match (
                    o.get("userDirectory").and_then(Value::as_str),
                    o.get("userId").and_then(Value::as_str),
                ) {
                    (Some(d), Some(u)) => self.user_by_name(d, u),
                    _ => None,
                }
            }
            .ok_or_else(|| OpError::BadRequest("The owner is not a known user".into()))?;
            if owner.id != stored.owner_id {
                next.owner_id = owner.id.clone();
                changed.push("owner".into());
            }
        }
        let resets = self.behaviour.put_resets_omitted_collections;
        let now = self.tick();
        match body.get("customProperties") {
            Some(Value::Array(items)) => {
                let mut values = Vec::new();
                for item in items {
                    values.push(self.parse_cp_value(item, &stored, now, actor)?);
                }
                next.custom_properties = values;
            }
            Some(Value::Null) | None if resets => next.custom_properties = vec![],
            Some(Value::Null) | None => {}
            Some(_) => {
                return Err(OpError::BadRequest(
                    "customProperties must be an array".into(),
                ));
            }
        }
        let pairs = |v: &[CpValue]| {
            let mut p: Vec<(String, String)> = v
                .iter()
                .map(|c| (c.def_id.clone(), c.value.clone()))
                .collect();
            p.sort();
            p
        };
        if pairs(&next.custom_properties) != pairs(&stored.custom_properties) {
            changed.push("customProperties".into());
        }
        match body.get("tags") {
            Some(Value::Array(items)) => {
                let mut ids = Vec::new();
                for item in items {
                    let t = item
                        .get("id")
                        .and_then(Value::as_str)
                        .and_then(|id| self.tag_by_id(id))
                        .or_else(|| {
                            item.get("name")
                                .and_then(Value::as_str)
                                .and_then(|n| self.tags.iter().find(|t| eq_ci(&t.name, n)))
                        })
                        .ok_or_else(|| OpError::BadRequest(format!("Unknown tag {item}")))?;
                    if !ids.contains(&t.id) {
                        ids.push(t.id.clone());
                    }
                }
                next.tag_ids = ids;
            }
            Some(Value::Null) | None if resets => next.tag_ids = vec![],
            _ => {}
        }
        let mut a = next.tag_ids.clone();
        let mut b = stored.tag_ids.clone();
        a.sort();
        b.sort();
        if a != b {
            changed.push("tags".into());
        }
        self.ensure_user(actor);
        next.modified = now;
        next.modified_by = actor.to_string();
        changed.push("modifiedDate".into());
        let id = next.id.clone();
        self.apps[idx] = next;
        self.emit(Change::new("App", &id, 2, changed, now, None));
        Ok(self.app_json(&self.apps[idx], true))
    }

    fn parse_cp_value(
        &self,
        item: &Value,
        stored: &App,
        now: DateTime<Utc>,
        actor: &str,
    ) -> OpResult<CpValue> {
        let value = item
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| OpError::BadRequest("A custom property value has no value".into()))?;
        let def = item.get("definition");
        let d = def
            .and_then(|d| d.get("id"))
            .and_then(Value::as_str)
            .and_then(|id| self.def_by_id(id))
            .or_else(|| {
                def.and_then(|d| d.get("name"))
                    .and_then(Value::as_str)
                    .and_then(|n| self.def_by_name(n))
            })
            .ok_or_else(|| {
                OpError::BadRequest(format!("Unknown custom property definition in {item}"))
            })?;
        if let Some(existing) = stored
            .custom_properties
            .iter()
            .find(|v| v.def_id == d.id && v.value == value)
        {
            return Ok(existing.clone());
        }
        if self.behaviour.validate_custom_property_values {
            if !d.object_types.iter().any(|t| t.eq_ignore_ascii_case("App")) {
                return Err(OpError::BadRequest(format!(
                    "The custom property {} cannot be used on apps",
                    d.name
                )));
            }
            if !d.choice_values.is_empty() && !d.choice_values.iter().any(|c| c == value) {
                return Err(OpError::BadRequest(format!(
                    "{value} is not a valid value for the custom property {}",
                    d.name
                )));
            }
        }
        Ok(CpValue {
            id: new_id(),
            created: now,
            modified: now,
            modified_by: actor.into(),
            def_id: d.id.clone(),
            value: value.to_string(),
        })
    }

    /// `POST /qrs/app/{id}/export/{token}?skipData=`.
    pub fn export(
        &mut self,
        app_id: &str,
        token: &str,
        skip_data: bool,
        actor: &str,
    ) -> OpResult<Value> {
        let app = self.app(app_id)?;
        let len = if skip_data {
            nodata_len(app.content.size())
        } else {
            app.content.size()
        };
        let temp = new_id();
        let file =
            percent_encoding::utf8_percent_encode(&format!("{}.qvf", app.name), &PATH_SEGMENT)
                .to_string();
        let v = json!({
            "exportToken": token,
            "appId": app.id,
            "downloadPath": format!("/tempcontent/{temp}/{file}?serverNodeId={}", self.node_id),
            "cancelled": false,
            "schemaPath": "AppExportResponse"
        });
        let export = Export {
            user: actor.to_string(),
            content: app.content.clone(),
            len,
            used: false,
        };
        self.exports.insert(temp, export);
        Ok(v)
    }

    /// Claims the one download of an export.
    pub fn take_download(&mut self, temp_id: &str, actor: &str) -> OpResult<(Content, u64)> {
        let (s2, s_user) = (
            self.behaviour.second_download_status,
            self.behaviour.other_user_download_status,
        );
        let e = self
            .exports
            .iter_mut()
            .find(|(k, _)| eq_ci(k, temp_id))
            .map(|(_, e)| e)
            .ok_or_else(|| OpError::NotFound("Temporary content not found".into()))?;
        if e.used {
            return Err(OpError::Status(
                s2,
                "The export was already downloaded".into(),
            ));
        }
        if !eq_ci(&e.user, actor) {
            return Err(OpError::Status(
                s_user,
                "Only the user who exported the app can download it".into(),
            ));
        }
        e.used = true;
        Ok((e.content.clone(), e.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> (SiteState, tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut s = SiteState::new("dev", Behaviour::default(), tx);
        s.add_stream("Sales", "INTERNAL\\sa_api");
        s.add_def(
            "PromoteToServer",
            vec!["test - Overwrite".into()],
            vec!["App".into()],
            "",
        );
        (s, rx)
    }

    #[test]
    fn modified_dates_strictly_increase() {
        let (mut s, _rx) = site();
        let a = s.tick();
        let b = s.tick();
        let c = s.tick();
        assert!(a < b && b < c);
    }

    #[test]
    fn stale_update_conflicts_and_future_wins() {
        let (mut s, _rx) = site();
        let id = s.add_app("A", 10, "CORP\\alice", Some("Sales")).unwrap();
        let v = s.app_json(s.app(&id).unwrap(), true);
        s.set_custom_properties(
            &id,
            &[("PromoteToServer", "test - Overwrite")],
            "INTERNAL\\x",
        )
        .unwrap();
        let err = s.update_app(&id, &v, "INTERNAL\\sa_api").unwrap_err();
        assert_eq!(err.status(), 409);
        let mut missing = v.clone();
        missing.as_object_mut().unwrap().remove("modifiedDate");
        assert_eq!(
            s.update_app(&id, &missing, "INTERNAL\\sa_api")
                .unwrap_err()
                .status(),
            409
        );
        let mut future = v.clone();
        future["modifiedDate"] = json!("2999-01-01T00:00:00.000Z");
        future["description"] = json!("new");
        let out = s.update_app(&id, &future, "INTERNAL\\sa_api").unwrap();
        assert_eq!(out["description"], "new");
        // The stale body had no custom properties: a full-entity PUT replaces them.
        assert_eq!(out["customProperties"], json!([]));
        assert_eq!(out["modifiedByUserName"], "INTERNAL\\sa_api");
    }

    #[test]
    fn custom_property_values_are_validated() {
        let (mut s, _rx) = site();
        let id = s.add_app("A", 10, "CORP\\alice", None).unwrap();
        let mut v = s.app_json(s.app(&id).unwrap(), true);
        v["customProperties"] =
            json!([{"value": "nope", "definition": {"name": "PromoteToServer"}}]);
        assert_eq!(s.update_app(&id, &v, "X\\y").unwrap_err().status(), 400);
        v["customProperties"] =
            json!([{"value": "test - Overwrite", "definition": {"name": "PromoteToServer"}}]);
        let out = s.update_app(&id, &v, "X\\y").unwrap();
        assert_eq!(
            out["customProperties"][0]["definition"]["name"],
            "PromoteToServer"
        );
    }

    #[test]
    fn publish_replace_copy_delete() {
        let (mut s, _rx) = site();
        let a = s.add_app("A", 1000, "CORP\\alice", None).unwrap();
        let b = s.add_app("B", 5000, "CORP\\alice", Some("Sales")).unwrap();
        let sales = s.stream_by_name("Sales").unwrap().id.clone();
        let p = s.publish(&a, &sales, None, "X\\y").unwrap();
        assert_eq!(p["stream"]["name"], "Sales");
        assert_eq!(
            s.publish(&a, &sales, None, "X\\y").unwrap_err().status(),
            400
        );
        let r = s.replace(&a, &b, "X\\y").unwrap();
        assert_eq!(r["id"], b.as_str());
        assert_eq!(r["fileSize"], 1000);
        let c = s.copy(&b, Some("B copy"), false, "CORP\\bob").unwrap();
        assert_eq!(c["published"], false);
        assert_eq!(c["owner"]["userId"], "bob");
        s.delete_app(&a).unwrap();
        assert_eq!(s.app(&a).unwrap_err().status(), 404);
    }

    #[test]
    fn exports_download_once_by_the_same_user() {
        let (mut s, _rx) = site();
        let a = s
            .add_app("Q1 / 'x' #1", 1_000_000, "CORP\\alice", None)
            .unwrap();
        let e = s.export(&a, "tok", true, "INTERNAL\\sa_api").unwrap();
        let path = e["downloadPath"].as_str().unwrap().to_string();
        assert!(path.contains("Q1%20%2F%20%27x%27%20%231.qvf?serverNodeId="));
        let temp = path.split('/').nth(2).unwrap();
        assert_eq!(s.take_download(temp, "X\\other").unwrap_err().status(), 403);
        let (_, len) = s.take_download(temp, "internal\\SA_API").unwrap();
        assert_eq!(len, 100_000);
        assert_eq!(
            s.take_download(temp, "INTERNAL\\sa_api")
                .unwrap_err()
                .status(),
            404
        );
    }
}
