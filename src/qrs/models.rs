//! Typed QRS entities: only the fields Promoter uses; unknown fields are ignored.
//!
//! Dates are kept as the exact strings QRS sent (`modifiedDate` must go back unchanged).
//! Updates work on the full JSON (see [`super::QrsClient::update_app`]) so nothing these
//! types leave out is ever lost.

use serde::{Deserialize, Deserializer, Serialize};

/// The date QRS uses for "never" (e.g. `publishTime` of an unpublished app).
pub const UNSET_DATE: &str = "1753-01-01T00:00:00.000Z";

/// A user as referenced from an app or stream (`UserCondensed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserRef {
    pub id: String,
    pub user_id: String,
    pub user_directory: String,
    pub name: String,
}

impl UserRef {
    /// `DIRECTORY\userId`.
    pub fn qualified(&self) -> String {
        format!("{}\\{}", self.user_directory, self.user_id)
    }
}

/// A stream as referenced from an app (`StreamCondensed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StreamRef {
    pub id: String,
    pub name: String,
}

/// A custom property definition as referenced from a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DefinitionRef {
    pub id: String,
    pub name: String,
}

/// One custom property value on an entity. Several values of one definition are several
/// elements with the same definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomPropertyValue {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub value: String,
    pub definition: DefinitionRef,
}

/// A tag as referenced from an entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TagRef {
    pub id: String,
    pub name: String,
}

/// A full app (`GET /qrs/app/{id}`, `/qrs/app/full`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct App {
    pub id: String,
    pub name: String,
    pub description: String,
    pub owner: UserRef,
    pub stream: Option<StreamRef>,
    pub published: bool,
    /// [`UNSET_DATE`] when never published.
    pub publish_time: String,
    #[serde(deserialize_with = "null_as_default")]
    pub custom_properties: Vec<CustomPropertyValue>,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<TagRef>,
    /// Exactly as QRS sent it; the optimistic-concurrency token for updates.
    pub modified_date: String,
    pub modified_by_user_name: String,
    pub created_date: String,
    pub last_reload_time: String,
    pub file_size: u64,
}

impl App {
    /// Every value of the custom property `name` (definition names compare case-insensitively),
    /// in array order.
    pub fn property_values(&self, name: &str) -> Vec<&str> {
        self.custom_properties
            .iter()
            .filter(|p| p.definition.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_str())
            .collect()
    }

    /// Whether the app carries a tag with this name (case-insensitive).
    pub fn has_tag(&self, name: &str) -> bool {
        self.tags.iter().any(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// The stream name, when published.
    pub fn stream_name(&self) -> Option<&str> {
        self.stream.as_ref().map(|s| s.name.as_str())
    }
}

/// A stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Stream {
    pub id: String,
    pub name: String,
    pub owner: Option<UserRef>,
    #[serde(deserialize_with = "null_as_default")]
    pub custom_properties: Vec<CustomPropertyValue>,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<TagRef>,
    pub modified_date: String,
}

impl Stream {
    /// Every value of the custom property `name` (case-insensitive).
    pub fn property_values(&self, name: &str) -> Vec<&str> {
        self.custom_properties
            .iter()
            .filter(|p| p.definition.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_str())
            .collect()
    }
}

/// One user attribute (synced from the user directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserAttribute {
    pub attribute_type: String,
    pub attribute_value: String,
}

/// A user (`GET /qrs/user/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct User {
    pub id: String,
    pub user_id: String,
    pub user_directory: String,
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub attributes: Vec<UserAttribute>,
}

impl User {
    /// Every e-mail address (attributes whose type is `email`, case-insensitive), trimmed.
    pub fn emails(&self) -> Vec<&str> {
        self.attributes
            .iter()
            .filter(|a| a.attribute_type.trim().eq_ignore_ascii_case("email"))
            .map(|a| a.attribute_value.trim())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// The first e-mail address, if any.
    pub fn email(&self) -> Option<&str> {
        self.emails().into_iter().next()
    }

    /// `DIRECTORY\userId`.
    pub fn qualified(&self) -> String {
        format!("{}\\{}", self.user_directory, self.user_id)
    }
}

/// A tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tag {
    pub id: String,
    pub name: String,
}

impl From<&Tag> for TagRef {
    fn from(t: &Tag) -> Self {
        TagRef {
            id: t.id.clone(),
            name: t.name.clone(),
        }
    }
}

/// A custom property definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomPropertyDefinition {
    pub id: String,
    pub name: String,
    pub value_type: String,
    #[serde(deserialize_with = "null_as_default")]
    pub choice_values: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub object_types: Vec<String>,
    pub description: String,
    pub modified_date: String,
}

impl From<&CustomPropertyDefinition> for DefinitionRef {
    fn from(d: &CustomPropertyDefinition) -> Self {
        DefinitionRef {
            id: d.id.clone(),
            name: d.name.clone(),
        }
    }
}

/// `GET /qrs/about`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct About {
    pub build_version: String,
    pub build_date: String,
    pub database_provider: String,
    /// 0 undefined, 1 central, 2 rim.
    pub node_type: i64,
    pub requires_bootstrap: bool,
    pub single_node_only: bool,
}

/// The answer to `POST /qrs/app/{id}/export/{token}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportResponse {
    pub export_token: String,
    pub app_id: String,
    /// `/tempcontent/<token>/<name>.qvf?serverNodeId=...`, already encoded by QRS.
    pub download_path: String,
    pub cancelled: bool,
}

/// QRS's change type. Numeric in callbacks (`1`, `2`, `3`); names are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ChangeType {
    Undefined,
    Add,
    Update,
    Delete,
}

impl ChangeType {
    /// The number QRS uses.
    pub fn code(self) -> u8 {
        match self {
            ChangeType::Undefined => 0,
            ChangeType::Add => 1,
            ChangeType::Update => 2,
            ChangeType::Delete => 3,
        }
    }

    /// The name QRS uses in query parameters (`Add`, `Update`, `Delete`).
    pub fn name(self) -> &'static str {
        match self {
            ChangeType::Undefined => "Undefined",
            ChangeType::Add => "Add",
            ChangeType::Update => "Update",
            ChangeType::Delete => "Delete",
        }
    }

    fn from_code(n: i64) -> ChangeType {
        match n {
            1 => ChangeType::Add,
            2 => ChangeType::Update,
            3 => ChangeType::Delete,
            _ => ChangeType::Undefined,
        }
    }

    fn from_name(s: &str) -> ChangeType {
        match s.trim().to_ascii_lowercase().as_str() {
            "add" | "1" => ChangeType::Add,
            "update" | "2" => ChangeType::Update,
            "delete" | "3" => ChangeType::Delete,
            _ => ChangeType::Undefined,
        }
    }
}

impl<'de> Deserialize<'de> for ChangeType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Text(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Num(n) => ChangeType::from_code(n),
            Raw::Text(s) => ChangeType::from_name(&s),
        })
    }
}

/// One element of the JSON array QRS posts to a notification callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalChangeInfo {
    pub change_type: ChangeType,
    #[serde(default)]
    pub object_type: String,
    #[serde(rename = "objectID")]
    pub object_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub changed_properties: Vec<String>,
    #[serde(rename = "engineID", default, deserialize_with = "null_as_default")]
    pub engine_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub engine_type: String,
    #[serde(
        rename = "originatorNodeID",
        default,
        deserialize_with = "null_as_default"
    )]
    pub originator_node_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub originator_host_name: String,
    #[serde(rename = "originatorContextID", default)]
    pub originator_context_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub created_date: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub modified_date: String,
}

impl ExternalChangeInfo {
    /// Whether this change names `property` among its changed properties (case-insensitive).
    pub fn changed(&self, property: &str) -> bool {
        self.changed_properties
            .iter()
            .any(|p| p.eq_ignore_ascii_case(property))
    }
}

/// What a notification subscription listens for (`POST /qrs/notification`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSpec {
    /// Entity type name, e.g. `App`.
    pub object_type: String,
    /// Only this change type (all when `None`).
    pub change_type: Option<ChangeType>,
    /// Only updates of this property (`!name` inverts).
    pub property_name: Option<String>,
    /// Only entities matching this filter (ignored by QRS for deletes).
    pub filter: Option<super::Filter>,
    /// Only this entity.
    pub id: Option<String>,
}

impl NotificationSpec {
    /// All changes of one entity type.
    pub fn new(object_type: &str) -> Self {
        NotificationSpec {
            object_type: object_type.into(),
            change_type: None,
            property_name: None,
            filter: None,
            id: None,
        }
    }

    /// Restricts to one change type.
    pub fn change_type(mut self, t: ChangeType) -> Self {
        self.change_type = Some(t);
        self
    }

    /// Restricts updates to one property.
    pub fn property(mut self, name: &str) -> Self {
        self.property_name = Some(name.into());
        self
    }

    /// Restricts to entities matching a filter.
    pub fn filter(mut self, f: super::Filter) -> Self {
        self.filter = Some(f);
        self
    }
}

/// A `{"value": ...}` wrapper QRS uses for scalar answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ValueOrBare<T> {
    Wrapped { value: T },
    Bare(T),
}

impl<T> ValueOrBare<T> {
    pub(crate) fn into_inner(self) -> T {
        match self {
            ValueOrBare::Wrapped { value } | ValueOrBare::Bare(value) => value,
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"{
      "id": "35dffd22-9cf2-405e-a311-e4d7105d8cfb",
      "createdDate": "2018-12-17T15:58:21.204Z",
      "modifiedDate": "2018-12-17T15:58:22.071Z",
      "modifiedByUserName": "INTERNAL\\sa_repository",
      "customProperties": [{"id":"c1","value":"test - Overwrite","definition":{"id":"d1","name":"PromoteToServer","valueType":"Text","choiceValues":[]},"schemaPath":"CustomPropertyValue"},
                           {"value":"prod - Duplicate","definition":{"id":"d1","name":"PromoteToServer"}}],
      "owner": { "id": "eca5d404-3490-4c4a-ae2a-fc435a1c05ba", "userId": "sa_repository",
                 "userDirectory": "INTERNAL", "name": "sa_repository", "privileges": null },
      "name": "BarCharts", "appId": "", "publishTime": "1753-01-01T00:00:00.000Z",
      "published": false, "tags": [{"id":"t1","name":"AutoPromote","privileges":null}],
      "description": "", "stream": null, "fileSize": 1132728,
      "lastReloadTime": "2016-10-28T02:30:20.199Z", "thumbnail": "", "privileges": null,
      "schemaPath": "App", "somethingNew": {"x": 1}
    }"#;

    #[test]
    fn apps_parse_with_extra_fields() {
        let app: App = serde_json::from_str(APP).unwrap();
        assert_eq!(app.name, "BarCharts");
        assert_eq!(app.modified_date, "2018-12-17T15:58:22.071Z");
        assert_eq!(app.owner.qualified(), "INTERNAL\\sa_repository");
        assert!(app.stream.is_none());
        assert_eq!(app.publish_time, UNSET_DATE);
        assert_eq!(
            app.property_values("promotetoserver"),
            ["test - Overwrite", "prod - Duplicate"]
        );
        assert_eq!(app.custom_properties[1].id, None);
        assert!(app.has_tag("autopromote"));
        assert_eq!(app.file_size, 1132728);
    }

    #[test]
    fn users_give_emails_from_attributes() {
        let u: User = serde_json::from_str(
            r#"{"id":"u","userId":"bob","userDirectory":"CORP","name":"Bob",
                "attributes":[{"attributeType":"Group","attributeValue":"x"},
                              {"attributeType":"EMAIL","attributeValue":" bob@corp.com "},
                              {"attributeType":"email","attributeValue":"b2@corp.com","externalId":"e"}]}"#,
        )
        .unwrap();
        assert_eq!(u.emails(), ["bob@corp.com", "b2@corp.com"]);
        assert_eq!(u.email(), Some("bob@corp.com"));
        let none: User = serde_json::from_str(r#"{"id":"u","attributes":null}"#).unwrap();
        assert_eq!(none.email(), None);
    }

    #[test]
    fn change_infos_parse_numeric_and_named_change_types() {
        let v: Vec<ExternalChangeInfo> = serde_json::from_str(
            r#"[{"changeType": 2, "objectType": "App", "objectID": "a1",
                 "changedProperties": ["modifiedDate", "lastReloadTime"], "engineID": "",
                 "engineType": "", "originatorNodeID": "n", "originatorHostName": "h",
                 "originatorContextID": null, "createdDate": "c", "modifiedDate": "m",
                 "schemaPath": "ExternalChangeInfo"},
                {"changeType": "delete", "objectType": "App", "objectID": "a2", "changedProperties": null}]"#,
        )
        .unwrap();
        assert_eq!(v[0].change_type, ChangeType::Update);
        assert!(v[0].changed("lastreloadtime"));
        assert_eq!(v[0].originator_context_id, None);
        assert_eq!(v[1].change_type, ChangeType::Delete);
        assert!(v[1].changed_properties.is_empty());
    }

    #[test]
    fn scalar_answers_are_accepted_wrapped_or_bare() {
        let a: ValueOrBare<String> = serde_json::from_str(r#"{"value":"h1"}"#).unwrap();
        let b: ValueOrBare<String> = serde_json::from_str(r#""h2""#).unwrap();
        assert_eq!(a.into_inner(), "h1");
        assert_eq!(b.into_inner(), "h2");
    }
}
