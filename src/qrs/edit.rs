//! Pure edits on a full entity's JSON, for [`super::QrsClient::update_app`] closures.
//!
//! Each function changes only what it names and leaves every other property as QRS sent it
//! (QRS resets omitted properties to defaults, so updates always PUT the complete entity).

use serde_json::{Value, json};

use super::models::{DefinitionRef, TagRef};

fn array<'a>(entity: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    let obj = entity.as_object_mut()?;
    let slot = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
}

fn definition_name(v: &Value) -> &str {
    v.pointer("/definition/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn definition_id(v: &Value) -> &str {
    v.pointer("/definition/id")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Replaces every value of one custom property with `values` (none removes the property).
/// Existing elements whose value is kept stay as they are (ids and dates included).
pub fn set_property_values(entity: &mut Value, definition: &DefinitionRef, values: &[&str]) {
    let Some(props) = array(entity, "customProperties") else {
        return;
    };
    let is_def = |p: &Value| {
        (!definition.id.is_empty() && definition_id(p).eq_ignore_ascii_case(&definition.id))
            || (!definition.name.is_empty()
                && definition_name(p).eq_ignore_ascii_case(&definition.name))
    };
    let mut kept: Vec<Value> = Vec::new();
    let mut others: Vec<Value> = Vec::new();
    for p in props.drain(..) {
        if is_def(&p) {
            kept.push(p);
        } else {
            others.push(p);
        }
    }
    for v in values {
        let existing = kept
            .iter()
            .position(|p| p.get("value").and_then(Value::as_str) == Some(*v));
        match existing {
            Some(i) => others.push(kept.remove(i)),
            None => others.push(json!({
                "value": v,
                "definition": {"id": definition.id, "name": definition.name},
            })),
        }
    }
    *props = others;
}

/// Removes every value of the custom properties named in `names` (case-insensitive).
/// Returns whether anything was removed.
pub fn strip_properties(entity: &mut Value, names: &[&str]) -> bool {
    let Some(props) = array(entity, "customProperties") else {
        return false;
    };
    let before = props.len();
    props.retain(|p| {
        let n = definition_name(p);
        !names
            .iter()
            .any(|name| !name.is_empty() && n.eq_ignore_ascii_case(name))
    });
    props.len() != before
}

/// Adds a tag (by id) unless the entity already has it. Returns whether it was added.
pub fn add_tag(entity: &mut Value, tag: &TagRef) -> bool {
    let Some(tags) = array(entity, "tags") else {
        return false;
    };
    let has = tags.iter().any(|t| {
        t.get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| id.eq_ignore_ascii_case(&tag.id))
    });
    if !has {
        tags.push(json!({"id": tag.id, "name": tag.name}));
    }
    !has
}

/// Removes tags with this name (case-insensitive). Returns whether any was removed.
pub fn remove_tag(entity: &mut Value, name: &str) -> bool {
    let Some(tags) = array(entity, "tags") else {
        return false;
    };
    let before = tags.len();
    tags.retain(|t| {
        !t.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    });
    tags.len() != before
}

/// Sets the description.
pub fn set_description(entity: &mut Value, text: &str) {
    if let Some(obj) = entity.as_object_mut() {
        obj.insert("description".into(), Value::String(text.into()));
    }
}

/// Sets the owner (QRS needs only the user's id).
pub fn set_owner(entity: &mut Value, user_id: &str) {
    if let Some(obj) = entity.as_object_mut() {
        obj.insert("owner".into(), json!({ "id": user_id }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Value {
        json!({
            "id": "a", "modifiedDate": "m", "name": "x", "description": "d",
            "customProperties": [
                {"id": "v1", "value": "test - Overwrite", "definition": {"id": "d1", "name": "PromoteToServer"}},
                {"id": "v2", "value": "Sales", "definition": {"id": "d2", "name": "PromoteToStream"}},
                {"id": "v3", "value": "Approve", "definition": {"id": "d3", "name": "PromotionApproval"}}
            ],
            "tags": [{"id": "t1", "name": "Keep"}]
        })
    }

    #[test]
    fn strip_removes_only_named_properties() {
        let mut a = app();
        assert!(strip_properties(
            &mut a,
            &["promotetoserver", "PromotionApproval", ""]
        ));
        let props = a["customProperties"].as_array().unwrap();
        assert_eq!(props.len(), 1);
        assert_eq!(props[0]["id"], "v2");
        assert!(!strip_properties(&mut a, &["Nope"]));
        assert_eq!(a["description"], "d");
    }

    #[test]
    fn set_values_keeps_existing_elements_and_adds_new_ones() {
        let mut a = app();
        let def = DefinitionRef {
            id: "d2".into(),
            name: "PromoteToStream".into(),
        };
        set_property_values(&mut a, &def, &["Sales", "Finance"]);
        let props = a["customProperties"].as_array().unwrap();
        let streams: Vec<_> = props
            .iter()
            .filter(|p| p["definition"]["id"] == "d2")
            .collect();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0]["id"], "v2");
        assert_eq!(streams[1]["value"], "Finance");
        set_property_values(&mut a, &def, &[]);
        assert_eq!(a["customProperties"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn tags_are_added_once_and_removed_by_name() {
        let mut a = app();
        let t = TagRef {
            id: "t2".into(),
            name: "AutoPromote".into(),
        };
        assert!(add_tag(&mut a, &t));
        assert!(!add_tag(&mut a, &t));
        assert_eq!(a["tags"].as_array().unwrap().len(), 2);
        assert!(remove_tag(&mut a, "autopromote"));
        assert_eq!(a["tags"], json!([{"id": "t1", "name": "Keep"}]));
        let mut empty = json!({"id": "a", "tags": null});
        assert!(add_tag(&mut empty, &t));
    }

    #[test]
    fn description_and_owner() {
        let mut a = app();
        set_description(&mut a, "App promoted from node: 'x'");
        set_owner(&mut a, "u1");
        assert_eq!(a["description"], "App promoted from node: 'x'");
        assert_eq!(a["owner"], json!({"id": "u1"}));
    }
}
