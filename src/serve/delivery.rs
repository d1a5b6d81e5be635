//! Reading a callback delivery: pure validation of what QRS posts (no I/O).
//!
//! A delivery is a JSON array of `ExternalChangeInfo` records. Every record must be an app
//! (`objectType` `App`), name it by GUID (`objectID`) and carry a known `changeType` (1, 2, 3,
//! or `Add`/`Update`/`Delete`); `changedProperties`, when present, must be a list of names and
//! `modifiedDate` a string. One bad record refuses the whole delivery.

use serde_json::Value;

use crate::store::NewInboxRecord;

/// The callback endpoints, one per subscription kind.
pub const ENDPOINTS: [&str; 3] = ["update", "reload", "publish"];

/// Why a delivery was refused: a metric label and a short reason for the 400 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Metric label (`malformed_json`, `not_an_array`, `empty`, `invalid_record`).
    pub reason: &'static str,
    /// One sentence for the caller.
    pub message: String,
}

impl Rejection {
    fn new(reason: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

/// Validates a delivery received on `endpoint` and turns it into inbox records.
pub fn parse_delivery(endpoint: &str, body: &[u8]) -> Result<Vec<NewInboxRecord>, Rejection> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            "malformed_json",
            format!("the body is not JSON ({e}); expected an array of change records"),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(Rejection::new(
            "not_an_array",
            "the body must be a JSON array of change records",
        ));
    };
    if items.is_empty() {
        return Err(Rejection::new("empty", "the array holds no change records"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            parse_record(endpoint, item)
                .map_err(|m| Rejection::new("invalid_record", format!("record {i}: {m}")))
        })
        .collect()
}

fn parse_record(endpoint: &str, item: Value) -> Result<NewInboxRecord, String> {
    let Value::Object(obj) = &item else {
        return Err("is not an object".into());
    };
    let object_type = match obj.get("objectType") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("app") => "App".to_string(),
        Some(Value::String(t)) => return Err(format!("objectType \"{}\" is not App", short(t))),
        Some(_) => return Err("objectType is not a string".into()),
        None => return Err("objectType is missing".into()),
    };
    let object_id = match obj.get("objectID") {
        Some(Value::String(id)) => uuid::Uuid::parse_str(id)
            .map_err(|_| format!("objectID \"{}\" is not a GUID", short(id)))?
            .hyphenated()
            .to_string(),
        Some(_) => return Err("objectID is not a string".into()),
        None => return Err("objectID is missing".into()),
    };
    let change_type = match obj.get("changeType") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(c @ 1..=3) => c,
            _ => return Err(format!("changeType {n} is not 1, 2 or 3")),
        },
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "add" | "1" => 1,
            "update" | "2" => 2,
            "delete" | "3" => 3,
            _ => {
                return Err(format!(
                    "changeType \"{}\" is not Add, Update or Delete",
                    short(s)
                ));
            }
        },
        Some(_) => return Err("changeType is not a number".into()),
        None => return Err("changeType is missing".into()),
    };
    let changed_properties = match obj.get("changedProperties") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| match p {
                Value::String(s) => Ok(s.clone()),
                _ => Err("changedProperties holds something other than names".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("changedProperties is not a list".into()),
    };
    let modified_date = match obj.get("modifiedDate") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::String(_)) => None,
        Some(_) => return Err("modifiedDate is not a string".into()),
    };
    Ok(NewInboxRecord {
        source: endpoint.to_string(),
        object_type,
        object_id,
        change_type,
        changed_properties,
        modified_date,
        payload: item,
    })
}

/// At most 60 characters of caller-supplied text, for error messages.
fn short(s: &str) -> String {
    if s.chars().count() <= 60 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(60).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "a5852393-6d0c-4842-9ddf-3c49b1bd3446";

    fn rec(extra: &str) -> String {
        format!(
            r#"{{"changeType": 2, "objectType": "App", "objectID": "{ID}",
                 "changedProperties": ["modifiedDate", "publishTime"],
                 "modifiedDate": "2024-11-19T07:37:20.156Z", "schemaPath": "ExternalChangeInfo"{extra}}}"#
        )
    }

    #[test]
    fn a_real_delivery_is_read() {
        let body = format!("[{}]", rec(r#", "originatorContextID": null"#));
        let records = parse_delivery("publish", body.as_bytes()).unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r.source, "publish");
        assert_eq!(r.object_type, "App");
        assert_eq!(r.object_id, ID);
        assert_eq!(r.change_type, 2);
        assert_eq!(r.changed_properties, vec!["modifiedDate", "publishTime"]);
        assert_eq!(r.modified_date.as_deref(), Some("2024-11-19T07:37:20.156Z"));
        assert_eq!(r.payload["schemaPath"], "ExternalChangeInfo");
    }

    #[test]
    fn tolerated_variations() {
        let body = format!(
            r#"[{{"changeType": "update", "objectType": "app", "objectID": "{}"}},
                {{"changeType": 3, "objectType": "App", "objectID": "{{{ID}}}", "changedProperties": null, "modifiedDate": null}}]"#,
            ID.to_uppercase()
        );
        let records = parse_delivery("update", body.as_bytes()).unwrap();
        assert_eq!(records[0].object_id, ID, "GUIDs are normalised");
        assert_eq!(records[0].change_type, 2);
        assert_eq!(records[0].object_type, "App");
        assert_eq!(records[1].object_id, ID);
        assert!(records[1].changed_properties.is_empty());
        assert_eq!(records[1].modified_date, None);
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "malformed_json", "not JSON"),
            ("[{", "malformed_json", "not JSON"),
            ("{}", "not_an_array", "array"),
            ("\"x\"", "not_an_array", "array"),
            ("[]", "empty", "no change records"),
            ("[1]", "invalid_record", "record 0: is not an object"),
            (
                r#"[{"changeType": 2, "objectType": "Stream", "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446"}]"#,
                "invalid_record",
                "objectType \"Stream\" is not App",
            ),
            (
                r#"[{"changeType": 2, "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446"}]"#,
                "invalid_record",
                "objectType is missing",
            ),
            (
                r#"[{"changeType": 2, "objectType": "App", "objectID": "not-a-guid"}]"#,
                "invalid_record",
                "is not a GUID",
            ),
            (
                r#"[{"changeType": 2, "objectType": "App", "objectID": 5}]"#,
                "invalid_record",
                "objectID is not a string",
            ),
            (
                r#"[{"changeType": 9, "objectType": "App", "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446"}]"#,
                "invalid_record",
                "changeType 9",
            ),
            (
                r#"[{"changeType": "Rename", "objectType": "App", "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446"}]"#,
                "invalid_record",
                "changeType \"Rename\"",
            ),
            (
                r#"[{"objectType": "App", "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446"}]"#,
                "invalid_record",
                "changeType is missing",
            ),
            (
                r#"[{"changeType": 2, "objectType": "App", "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446", "changedProperties": "name"}]"#,
                "invalid_record",
                "changedProperties is not a list",
            ),
            (
                r#"[{"changeType": 2, "objectType": "App", "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446", "changedProperties": [1]}]"#,
                "invalid_record",
                "other than names",
            ),
            (
                r#"[{"changeType": 2, "objectType": "App", "objectID": "a5852393-6d0c-4842-9ddf-3c49b1bd3446", "modifiedDate": 5}]"#,
                "invalid_record",
                "modifiedDate is not a string",
            ),
        ];
        for (body, reason, text) in cases {
            let r = parse_delivery("update", body.as_bytes()).unwrap_err();
            assert_eq!(r.reason, *reason, "{body}");
            assert!(r.message.contains(text), "{body}: {}", r.message);
        }
    }

    #[test]
    fn one_bad_record_refuses_the_delivery() {
        let body = format!("[{}, {{\"changeType\": 2}}]", rec(""));
        let r = parse_delivery("update", body.as_bytes()).unwrap_err();
        assert!(r.message.starts_with("record 1:"), "{}", r.message);
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(500);
        let body = format!(r#"[{{"changeType": 2, "objectType": "{long}", "objectID": "{ID}"}}]"#);
        let r = parse_delivery("update", body.as_bytes()).unwrap_err();
        assert!(r.message.len() < 150, "{}", r.message);
    }
}
