//! Change subscriptions (`POST /qrs/notification`) and their deliveries.
//!
//! Subscriptions live in memory and are forgotten when a site restarts. Each matching change is
//! POSTed as a JSON array holding one `ExternalChangeInfo` to the callback URL, asynchronously and
//! in order, by one delivery task per site; faults can duplicate, drop or delay deliveries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::filter::{self, Expr};
use super::state::fmt_date;
use super::{Faults, SimSubscription};

/// One change to an entity.
#[derive(Debug, Clone)]
pub struct Change {
    pub object_type: &'static str,
    pub object_id: String,
    /// 1 Add, 2 Update, 3 Delete.
    pub change_type: u8,
    pub changed_properties: Vec<String>,
    pub at: DateTime<Utc>,
    pub context: Option<String>,
}

impl Change {
    pub fn new(
        object_type: &'static str,
        object_id: &str,
        change_type: u8,
        changed_properties: Vec<String>,
        at: DateTime<Utc>,
        context: Option<String>,
    ) -> Self {
        Change {
            object_type,
            object_id: object_id.to_string(),
            change_type,
            changed_properties,
            at,
            context,
        }
    }

    /// The callback body: an array with one `ExternalChangeInfo`.
    pub fn body(&self, node_id: &str) -> String {
        json!([{
            "changeType": self.change_type,
            "objectType": self.object_type,
            "objectID": self.object_id,
            "changedProperties": self.changed_properties,
            "engineID": "",
            "engineType": "",
            "originatorNodeID": node_id,
            "originatorHostName": "localhost",
            "originatorContextID": self.context,
            "createdDate": fmt_date(self.at),
            "modifiedDate": fmt_date(self.at),
            "schemaPath": "ExternalChangeInfo"
        }])
        .to_string()
    }
}

/// A registered subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub handle: String,
    pub name: String,
    pub change_type: Option<u8>,
    pub property_name: Option<String>,
    pub filter_text: Option<String>,
    pub filter: Option<Expr>,
    pub id: Option<String>,
    pub url: String,
    pub user: String,
}

/// `changetype` as QRS takes it: a number or a name, any case. `Ok(None)`: every change type.
pub fn parse_change_type(s: &str) -> Result<Option<u8>, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "undefined" => Ok(None),
        "1" | "add" => Ok(Some(1)),
        "2" | "update" => Ok(Some(2)),
        "3" | "delete" => Ok(Some(3)),
        other => Err(format!("Unknown change type {other}")),
    }
}

impl Subscription {
    /// Builds a subscription from the query parameters of `POST /qrs/notification`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        change_type: Option<&str>,
        property_name: Option<&str>,
        filter_text: Option<&str>,
        id: Option<&str>,
        url: &str,
        user: &str,
    ) -> Result<Self, String> {
        let filter_text = filter_text.filter(|f| !f.trim().is_empty());
        let filter = match filter_text {
            Some(f) => filter::parse(f).map_err(|e| e.to_string())?,
            None => None,
        };
        Ok(Subscription {
            handle: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            change_type: match change_type {
                Some(c) => parse_change_type(c)?,
                None => None,
            },
            property_name: property_name
                .filter(|p| !p.trim().is_empty())
                .map(str::to_string),
            filter_text: filter_text.map(str::to_string),
            filter,
            id: id.filter(|i| !i.trim().is_empty()).map(str::to_string),
            url: url.to_string(),
            user: user.to_string(),
        })
    }

    /// Whether this subscription is told about `change`. `entity` is the changed entity's JSON
    /// (none for deletes, which ignore the filter as QRS does).
    pub fn wants(&self, change: &Change, entity: Option<&Value>, spurious: bool) -> bool {
        if !self.name.eq_ignore_ascii_case(change.object_type) {
            return false;
        }
        if self.change_type.is_some_and(|c| c != change.change_type) {
            return false;
        }
        if self
            .id
            .as_deref()
            .is_some_and(|id| !id.eq_ignore_ascii_case(&change.object_id))
        {
            return false;
        }
        if change.change_type != 3
            && let Some(f) = &self.filter
            && !entity.is_some_and(|e| filter::matches(f, e))
        {
            return false;
        }
        if change.change_type == 2
            && let Some(p) = &self.property_name
            && !spurious
        {
            let changed = |name: &str| {
                change
                    .changed_properties
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(name))
            };
            return match p.strip_prefix('!') {
                Some(not) => change.changed_properties.iter().any(|c| {
                    !c.eq_ignore_ascii_case(not) && !c.eq_ignore_ascii_case("modifiedDate")
                }),
                None => changed(p),
            };
        }
        true
    }

    pub fn public(&self) -> SimSubscription {
        SimSubscription {
            handle: self.handle.clone(),
            name: self.name.clone(),
            change_type: self.change_type.map(|c| {
                match c {
                    1 => "Add",
                    2 => "Update",
                    _ => "Delete",
                }
                .to_string()
            }),
            property_name: self.property_name.clone(),
            filter: self.filter_text.clone(),
            id: self.id.clone(),
            callback_url: self.url.clone(),
            user: self.user.clone(),
        }
    }
}

/// One POST to a callback URL.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: String,
    pub body: String,
}

/// Starts the delivery task of one site on `rt`.
pub fn spawn_worker(
    rt: &tokio::runtime::Handle,
    faults: Arc<Mutex<Faults>>,
    timeout: Duration,
) -> anyhow::Result<(
    tokio::sync::mpsc::UnboundedSender<Delivery>,
    tokio::task::JoinHandle<()>,
)> {
    crate::tls::init();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(timeout)
        .build()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
    let task = rt.spawn(async move {
        while let Some(d) = rx.recv().await {
            let (times, delay) = {
                let Ok(mut f) = faults.lock() else { return };
                if f.drop_deliveries > 0 {
                    f.drop_deliveries -= 1;
                    tracing::info!(url = %d.url, "simulated fault: notification dropped");
                    continue;
                }
                (f.duplicates.max(1), f.delivery_delay)
            };
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            for _ in 0..times {
                let r = client
                    .post(&d.url)
                    .header("content-type", "application/json")
                    .body(d.body.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {}
                    Ok(resp) => {
                        tracing::debug!(url = %d.url, status = %resp.status(), "notification not accepted")
                    }
                    Err(e) => tracing::debug!(url = %d.url, error = %e, "notification not delivered"),
                }
            }
        }
    });
    Ok((tx, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(ct: u8, props: &[&str]) -> Change {
        Change::new(
            "App",
            "abc",
            ct,
            props.iter().map(|p| p.to_string()).collect(),
            Utc::now(),
            None,
        )
    }

    fn sub(ct: Option<&str>, prop: Option<&str>, filter: Option<&str>) -> Subscription {
        Subscription::new("app", ct, prop, filter, None, "http://x", "A\\b").unwrap()
    }

    #[test]
    fn matching_table() {
        let app = json!({"name": "Sales", "published": true});
        let upd = change(2, &["customProperties", "modifiedDate"]);
        let reload = change(2, &["lastReloadTime", "modifiedDate"]);
        let del = change(3, &[]);
        let cases: Vec<(Subscription, &Change, bool)> = vec![
            (sub(None, None, None), &upd, true),
            (sub(Some("update"), None, None), &upd, true),
            (sub(Some("2"), None, None), &upd, true),
            (sub(Some("Add"), None, None), &upd, false),
            (
                sub(Some("update"), Some("lastReloadTime"), None),
                &upd,
                false,
            ),
            (
                sub(Some("update"), Some("lastreloadtime"), None),
                &reload,
                true,
            ),
            (
                sub(Some("update"), Some("!lastReloadTime"), None),
                &upd,
                true,
            ),
            (
                sub(Some("update"), Some("!lastReloadTime"), None),
                &reload,
                false,
            ),
            (sub(None, None, Some("name eq 'sales'")), &upd, true),
            (sub(None, None, Some("name eq 'other'")), &upd, false),
            (sub(None, None, Some("name eq 'other'")), &del, true),
            (sub(Some("delete"), None, None), &del, true),
        ];
        for (i, (s, c, want)) in cases.iter().enumerate() {
            assert_eq!(s.wants(c, Some(&app), false), *want, "case {i}");
        }
        let other = Subscription::new("Stream", None, None, None, None, "u", "A\\b").unwrap();
        assert!(!other.wants(&upd, Some(&app), false));
        let by_id = Subscription::new("App", None, None, None, Some("ABC"), "u", "A\\b").unwrap();
        assert!(by_id.wants(&upd, Some(&app), false));
        assert!(
            sub(Some("update"), Some("lastReloadTime"), None).wants(&upd, Some(&app), true),
            "spurious updates ignore propertyName"
        );
        assert!(Subscription::new("App", Some("sideways"), None, None, None, "u", "A\\b").is_err());
        assert!(Subscription::new("App", None, None, Some("name eq"), None, "u", "A\\b").is_err());
    }

    #[test]
    fn body_is_an_external_change_info_array() {
        let v: Value = serde_json::from_str(&change(2, &["lastReloadTime"]).body("node")).unwrap();
        assert_eq!(v[0]["changeType"], 2);
        assert_eq!(v[0]["objectType"], "App");
        assert_eq!(v[0]["objectID"], "abc");
        assert_eq!(v[0]["changedProperties"][0], "lastReloadTime");
        assert_eq!(v[0]["schemaPath"], "ExternalChangeInfo");
    }
}
