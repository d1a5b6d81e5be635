//! Building an [`AppSnapshot`] from QRS reads (read-only: only a [`QrsReader`] is needed).

use crate::qrs::{self, QrsError, QrsReader, UNSET_DATE};

use super::model::{AppSnapshot, Owner, StreamRef};

/// Maps a QRS app (and, when read, its owner with attributes) to the decision core's snapshot.
/// Pure: no I/O.
pub fn from_qrs(app: &qrs::App, owner: Option<&qrs::User>) -> AppSnapshot {
    let date = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s != UNSET_DATE).then(|| s.to_string())
    };
    let name = owner
        .map(|u| u.name.clone())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| app.owner.name.clone());
    AppSnapshot {
        id: app.id.clone(),
        name: app.name.clone(),
        description: app.description.clone(),
        owner: Owner {
            id: app.owner.id.clone(),
            directory: app.owner.user_directory.clone(),
            user_id: app.owner.user_id.clone(),
            name,
            email: owner.and_then(|u| u.email()).map(str::to_string),
        },
        stream: app.stream.as_ref().map(|s| StreamRef {
            id: s.id.clone(),
            name: s.name.clone(),
        }),
        published: app.published,
        custom_properties: app
            .custom_properties
            .iter()
            .map(|p| (p.definition.name.clone(), p.value.clone()))
            .collect(),
        tags: app.tags.iter().map(|t| t.name.clone()).collect(),
        modified_date: app.modified_date.clone(),
        last_reload_time: date(&app.last_reload_time),
        modified_by: Some(app.modified_by_user_name.trim().to_string()).filter(|s| !s.is_empty()),
    }
}

/// Reads the app and its owner from a site (GETs only) and builds the snapshot. A missing owner
/// record (404) leaves the owner's email unknown; other failures are returned.
pub async fn load(reader: &QrsReader, app_id: &str) -> Result<AppSnapshot, QrsError> {
    let app = reader.get_app(app_id).await?;
    let owner = if app.owner.id.trim().is_empty() {
        None
    } else {
        match reader.get_user(&app.owner.id).await {
            Ok(u) => Some(u),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        }
    };
    Ok(from_qrs(&app, owner.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qrs::{CustomPropertyValue, DefinitionRef, TagRef, UserAttribute, UserRef};

    #[test]
    fn maps_every_field() {
        let app = qrs::App {
            id: "a1".into(),
            name: "Sales".into(),
            description: "d".into(),
            owner: UserRef {
                id: "u1".into(),
                user_id: "jdoe".into(),
                user_directory: "CORP".into(),
                name: "Jane".into(),
            },
            stream: Some(qrs::StreamRef {
                id: "s1".into(),
                name: "Review".into(),
            }),
            published: true,
            custom_properties: vec![CustomPropertyValue {
                id: None,
                value: "Approve".into(),
                definition: DefinitionRef {
                    id: "d1".into(),
                    name: "PromotionApproval".into(),
                },
            }],
            tags: vec![TagRef {
                id: "t1".into(),
                name: "PromoteOnReload".into(),
            }],
            modified_date: "2024-05-01T10:00:00.000Z".into(),
            modified_by_user_name: "CORP\\boss".into(),
            last_reload_time: UNSET_DATE.into(),
            ..Default::default()
        };
        let user = qrs::User {
            id: "u1".into(),
            name: "Jane Doe".into(),
            attributes: vec![UserAttribute {
                attribute_type: "Email".into(),
                attribute_value: " jane@example.com ".into(),
            }],
            ..Default::default()
        };
        let s = from_qrs(&app, Some(&user));
        assert_eq!(s.owner.account(), "CORP\\jdoe");
        assert_eq!(s.owner.name, "Jane Doe");
        assert_eq!(s.owner.email.as_deref(), Some("jane@example.com"));
        assert_eq!(s.stream.as_ref().map(|s| s.name.as_str()), Some("Review"));
        assert_eq!(
            s.custom_properties,
            [("PromotionApproval".to_string(), "Approve".to_string())]
        );
        assert_eq!(s.tags, ["PromoteOnReload"]);
        assert_eq!(s.last_reload_time, None);
        assert_eq!(s.modified_by.as_deref(), Some("CORP\\boss"));
        let s = from_qrs(&app, None);
        assert_eq!(s.owner.name, "Jane");
        assert_eq!(s.owner.email, None);
    }
}
