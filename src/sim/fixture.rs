//! The fixture (JSON) every site is seeded from: streams, users, custom property definitions,
//! tags and apps. `tests/fixtures/sim-default.json` is built in.
//!
//! `onlyOn` / `notOn` take site selectors: an alias, `local` (the first site) or `remote` (the
//! others). A choice value containing `{remote}` is repeated once per remote alias.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::state::{SYSTEM_USER, SiteState};

/// The built-in fixture.
pub const DEFAULT_FIXTURE: &str = include_str!("../../tests/fixtures/sim-default.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fixture {
    #[serde(default, rename = "_comment")]
    _comment: Option<String>,
    #[serde(default)]
    pub streams: Vec<FixtureStream>,
    #[serde(default)]
    pub users: Vec<FixtureUser>,
    #[serde(default)]
    pub custom_property_definitions: Vec<FixtureDef>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub apps: Vec<FixtureApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Where {
    #[serde(default)]
    pub only_on: Option<Vec<String>>,
    #[serde(default)]
    pub not_on: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureStream {
    pub name: String,
    #[serde(default)]
    pub custom_properties: BTreeMap<String, Vec<String>>,
    #[serde(flatten)]
    pub place: Where,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureUser {
    pub user_directory: String,
    pub user_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub emails: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureDef {
    pub name: String,
    #[serde(default)]
    pub choice_values: Vec<String>,
    #[serde(default)]
    pub object_types: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureApp {
    pub name: String,
    pub size_bytes: u64,
    pub owner: String,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: BTreeMap<String, Vec<String>>,
    #[serde(flatten)]
    pub place: Where,
}

impl Fixture {
    /// Parses fixture text; the error names the source.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<Fixture> {
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("fixture {source}: {e}"))
    }
}

impl Where {
    fn applies(&self, alias: &str, is_local: bool) -> bool {
        let hit = |sel: &String| {
            sel.eq_ignore_ascii_case(alias)
                || (sel.eq_ignore_ascii_case("local") && is_local)
                || (sel.eq_ignore_ascii_case("remote") && !is_local)
        };
        self.only_on.as_ref().is_none_or(|o| o.iter().any(hit)) && !self.not_on.iter().any(hit)
    }
}

/// Seeds one site. `remotes` are the remote aliases (for `{remote}` choice values).
pub fn seed(
    st: &mut SiteState,
    fx: &Fixture,
    is_local: bool,
    remotes: &[String],
) -> anyhow::Result<()> {
    let alias = st.alias.clone();
    for u in &fx.users {
        st.add_user(
            &u.user_directory,
            &u.user_id,
            u.name.as_deref().unwrap_or(&u.user_id),
            u.emails.clone(),
        );
    }
    for d in &fx.custom_property_definitions {
        let mut choices = Vec::new();
        for c in &d.choice_values {
            if c.contains("{remote}") {
                choices.extend(remotes.iter().map(|r| c.replace("{remote}", r)));
            } else {
                choices.push(c.clone());
            }
        }
        st.add_def(&d.name, choices, d.object_types.clone(), &d.description);
    }
    for t in &fx.tags {
        st.create_tag(t, SYSTEM_USER)
            .map_err(|e| anyhow::anyhow!("fixture tag {t}: {e}"))?;
    }
    for s in fx
        .streams
        .iter()
        .filter(|s| s.place.applies(&alias, is_local))
    {
        let id = st.add_stream(&s.name, SYSTEM_USER);
        let props: Vec<(String, String)> = s
            .custom_properties
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
            .collect();
        st.set_stream_properties(&id, &props)
            .map_err(|e| anyhow::anyhow!("fixture stream {}: {e}", s.name))?;
    }
    for a in fx.apps.iter().filter(|a| a.place.applies(&alias, is_local)) {
        let stream = a
            .stream
            .as_deref()
            .filter(|s| st.stream_by_name(s).is_some());
        let id = st
            .add_app(&a.name, a.size_bytes, &a.owner, stream)
            .map_err(|e| anyhow::anyhow!("fixture app {}: {e}", a.name))?;
        st.set_app_details(&id, &a.description, &a.tags);
        let props: Vec<(&str, &str)> = a
            .custom_properties
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str())))
            .collect();
        if !props.is_empty() {
            st.set_custom_properties(&id, &props, &a.owner)
                .map_err(|e| anyhow::anyhow!("fixture app {}: {e}", a.name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Behaviour;

    #[test]
    fn default_fixture_seeds_local_and_remotes_differently() {
        let fx = Fixture::parse(DEFAULT_FIXTURE, "default").unwrap();
        let remotes = vec!["test".to_string(), "prod".to_string()];
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut dev = SiteState::new("dev", Behaviour::default(), tx.clone());
        seed(&mut dev, &fx, true, &remotes).unwrap();
        let mut prod = SiteState::new("prod", Behaviour::default(), tx);
        seed(&mut prod, &fx, false, &remotes).unwrap();

        let def = dev.def_by_name("PromoteToServer").unwrap();
        assert_eq!(
            def.choice_values,
            [
                "test - Overwrite",
                "prod - Overwrite",
                "test - Duplicate",
                "prod - Duplicate"
            ]
        );
        assert!(dev.stream_by_name("Review").is_some());
        assert!(dev.stream_by_name("Finance").is_some());
        assert!(prod.stream_by_name("Finance").is_none());
        assert!(prod.stream_by_name("Review").is_none());
        assert!(dev.apps.len() >= 5);
        assert_eq!(prod.apps.len(), 1);
        let review = dev.stream_by_name("Review").unwrap();
        assert_eq!(review.custom_properties.len(), 1);
        let nomail = dev.user_by_name("CORP", "nomail").unwrap();
        assert!(nomail.emails.is_empty());
        assert!(
            dev.apps
                .iter()
                .any(|a| a.name.contains('\'') && a.name.contains('#'))
        );
    }
}
