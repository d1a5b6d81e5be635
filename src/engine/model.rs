//! Domain types of the promotion engine: what the decision core reads and what it returns.
//!
//! Plain data only (serde, no I/O). The executor stores a [`Plan`] in its job and runs its
//! [`Command`]s in order, recording each by its [`Command::step_key`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{PropertyNames, Settings};

/// The owner of an app on the local site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// QRS user id (GUID); the unpublish copy is given to this user.
    pub id: String,
    /// User directory, e.g. `INTERNAL` or `CORP`.
    pub directory: String,
    /// User id inside the directory, e.g. `jdoe`.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Email address from the user's attributes, when known (the executor may fill it later).
    pub email: Option<String>,
}

impl Owner {
    /// `DIRECTORY\userid`, as shown in mail, descriptions and the audit trail.
    pub fn account(&self) -> String {
        format!("{}\\{}", self.directory, self.user_id)
    }
}

/// A stream on a site, by id and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRef {
    /// QRS stream id (GUID).
    pub id: String,
    /// Stream name.
    pub name: String,
}

/// What the decision core knows about a source app: one read of the app on the local site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSnapshot {
    /// QRS app id (GUID).
    pub id: String,
    /// App name.
    pub name: String,
    /// App description.
    pub description: String,
    /// The app's owner.
    pub owner: Owner,
    /// The stream the app is published to, if any.
    pub stream: Option<StreamRef>,
    /// Whether the app is published.
    pub published: bool,
    /// Custom property values as `(property name, value)`. Multi-valued properties appear once
    /// per value; the order carries no meaning.
    pub custom_properties: Vec<(String, String)>,
    /// Tag names on the app.
    pub tags: Vec<String>,
    /// QRS `modifiedDate` of this read (identifies the version of the app the decision saw).
    pub modified_date: String,
    /// QRS `lastReloadTime`, if the app was ever reloaded.
    pub last_reload_time: Option<String>,
    /// QRS `modifiedByUserName`: who made the last change (the approver, for an approval).
    pub modified_by: Option<String>,
}

impl AppSnapshot {
    /// The values of the custom property `name` (trimmed, case-insensitive name match), in the
    /// order the app lists them. An empty `name` (a disabled property) matches nothing.
    pub fn property_values<'a>(&'a self, name: &str) -> Vec<&'a str> {
        let name = name.trim();
        if name.is_empty() {
            return Vec::new();
        }
        self.custom_properties
            .iter()
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the app carries the tag `tag` (case-insensitive, trimmed).
    pub fn has_tag(&self, tag: &str) -> bool {
        let tag = tag.trim();
        !tag.is_empty() && self.tags.iter().any(|t| t.trim().eq_ignore_ascii_case(tag))
    }
}

/// What made the engine look at an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Any update of the app (QRS subscription on app updates): the approval path.
    AppUpdated,
    /// The app was reloaded (`lastReloadTime` changed): the promote-on-reload path.
    AppReloaded,
    /// The app was published (`publishTime` changed): the publish-review notice.
    AppPublished,
    /// `promoter promote` / `promoter plan`: the approval path, run now.
    Manual,
    /// The catch-up sweep found the app with promotion properties: the approval path.
    Sweep,
}

impl Trigger {
    /// Stable name (store, audit trail).
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::AppUpdated => "app_updated",
            Trigger::AppReloaded => "app_reloaded",
            Trigger::AppPublished => "app_published",
            Trigger::Manual => "manual",
            Trigger::Sweep => "sweep",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of the configuration the decision core reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionConfig {
    /// `PromotionApproval` values that mean approve (compared trimmed, case-insensitively).
    pub approve_values: Vec<String>,
    /// `PromotionApproval` values that mean deny (compared trimmed, case-insensitively).
    pub deny_values: Vec<String>,
    /// Custom property names.
    pub properties: PropertyNames,
    /// Unpublish the source after approval or denial, whatever `PromotionUnpublish` says.
    pub auto_unpublish: bool,
    /// Honour `PromoteOnReload = True`.
    pub promote_on_reload: bool,
    /// The tag put on apps promoted on reload.
    pub reload_tag: String,
    /// Versioning is configured.
    pub versioning_enabled: bool,
    /// Version every promotion, whatever `PromotionS3Versioning` says.
    pub versioning_auto: bool,
    /// The configured target site aliases, in configuration order.
    pub remote_aliases: Vec<String>,
    /// The master switch for email.
    pub email_enabled: bool,
}

impl DecisionConfig {
    /// The decision view of the loaded settings.
    pub fn from_settings(s: &Settings) -> DecisionConfig {
        DecisionConfig {
            approve_values: s.promotion.approve_values.clone(),
            deny_values: s.promotion.deny_values.clone(),
            properties: s.properties.clone(),
            auto_unpublish: s.promotion.auto_unpublish,
            promote_on_reload: s.promotion.promote_on_reload,
            reload_tag: s.promotion.reload_tag.clone(),
            versioning_enabled: s.versioning.enabled,
            versioning_auto: s.versioning.auto,
            remote_aliases: s.remotes.iter().map(|r| r.alias.clone()).collect(),
            email_enabled: s.email.enabled,
        }
    }
}

/// How a target site receives the app (`PromoteToServer = "<alias> - <mode>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Replace the app already published in the target stream (keeping its id), or publish a new
    /// one where there is none.
    Overwrite,
    /// Publish a new app into the target stream.
    Duplicate,
}

impl Mode {
    /// Display name as written in `PromoteToServer`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Overwrite => "Overwrite",
            Mode::Duplicate => "Duplicate",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One (site, stream) target of a promotion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// Site alias, spelled as in the configuration.
    pub site: String,
    /// Target stream name, as given in `PromoteToStream` (trimmed).
    pub stream: String,
    /// Overwrite or duplicate.
    pub mode: Mode,
}

/// One step of a plan. The executor runs the commands in order, each at most once per job
/// (recorded by [`Command::step_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Ask the approvers of the app's stream to review it (executor: only if the stream carries
    /// the `EmailAlertOnPublishTo` property and has recipients).
    NotifyPublishReview,
    /// Tell the owner the app was approved (before promotion starts).
    NotifyApproved,
    /// Tell the owner the app was denied.
    NotifyDenied,
    /// Export the source app once for the whole job (`skip_data = true`: the no-data copy used
    /// for versions).
    ExportSource {
        /// Export without data.
        skip_data: bool,
    },
    /// Store the no-data export as a version (its version id goes into the target descriptions).
    StoreVersion,
    /// Put the exported app into one stream on one site.
    PromoteTo {
        /// Site alias (as configured).
        site: String,
        /// Target stream name.
        stream_name: String,
        /// Overwrite or duplicate.
        mode: Mode,
    },
    /// Unpublish the source: copy it, give the copy to the owner, delete the published app.
    UnpublishSource,
    /// Remove these custom properties from the source app (one GET + PUT).
    StripPromotionProperties {
        /// Property names to remove (the configured names; never `PromoteOnReload`).
        properties: Vec<String>,
    },
    /// Put the reload tag on the source app (creating the tag if it does not exist).
    TagForReload {
        /// Tag name.
        tag: String,
    },
    /// Remove the reload tag from the source app (it no longer carries `PromoteOnReload = True`).
    UntagForReload {
        /// Tag name.
        tag: String,
    },
    /// Tell the owner the outcome of each target.
    NotifyResult,
    /// Remove the job's temporary files (exports).
    CleanUp,
}

impl Command {
    /// A key unique within a plan and stable across runs, e.g. `promote:test:Sales`, so the
    /// executor can record a step before and after it runs and resume after a crash.
    /// `:` and `%` inside site and stream names are percent-encoded, so keys never collide.
    pub fn step_key(&self) -> String {
        match self {
            Command::NotifyPublishReview => "notify:publish_review".into(),
            Command::NotifyApproved => "notify:approved".into(),
            Command::NotifyDenied => "notify:denied".into(),
            Command::ExportSource { skip_data: false } => "export:data".into(),
            Command::ExportSource { skip_data: true } => "export:nodata".into(),
            Command::StoreVersion => "version".into(),
            Command::PromoteTo {
                site, stream_name, ..
            } => format!("promote:{}:{}", key_part(site), key_part(stream_name)),
            Command::UnpublishSource => "unpublish".into(),
            Command::StripPromotionProperties { .. } => "strip".into(),
            Command::TagForReload { .. } => "tag".into(),
            Command::UntagForReload { .. } => "untag".into(),
            Command::NotifyResult => "notify:result".into(),
            Command::CleanUp => "cleanup".into(),
        }
    }

    /// Whether the step writes to the source app on the local site (the executor records an
    /// own-write marker for each such write; see `decide`'s module docs).
    pub fn writes_source(&self) -> bool {
        matches!(
            self,
            Command::UnpublishSource
                | Command::StripPromotionProperties { .. }
                | Command::TagForReload { .. }
                | Command::UntagForReload { .. }
        )
    }
}

fn key_part(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::NotifyPublishReview => {
                f.write_str("email the approvers of the stream that the app awaits review")
            }
            Command::NotifyApproved => f.write_str("email the owner that the app was approved"),
            Command::NotifyDenied => f.write_str("email the owner that the app was denied"),
            Command::ExportSource { skip_data: false } => {
                f.write_str("export the app with data (once, reused for every target)")
            }
            Command::ExportSource { skip_data: true } => {
                f.write_str("export the app without data (for the version)")
            }
            Command::StoreVersion => f.write_str("store the no-data export as a version"),
            Command::PromoteTo {
                site,
                stream_name,
                mode: Mode::Overwrite,
            } => write!(
                f,
                "site \"{site}\", stream \"{stream_name}\": overwrite the published app (or publish a new one if there is none)"
            ),
            Command::PromoteTo {
                site,
                stream_name,
                mode: Mode::Duplicate,
            } => write!(
                f,
                "site \"{site}\", stream \"{stream_name}\": publish a new app"
            ),
            Command::UnpublishSource => f.write_str(
                "unpublish the source: copy it to the owner's work, delete the published app",
            ),
            Command::StripPromotionProperties { properties } => write!(
                f,
                "remove the promotion properties from the source app ({})",
                properties.join(", ")
            ),
            Command::TagForReload { tag } => write!(
                f,
                "tag the source app \"{tag}\" (it is promoted again after each reload)"
            ),
            Command::UntagForReload { tag } => write!(
                f,
                "remove the tag \"{tag}\" from the source app (PromoteOnReload is no longer True)"
            ),
            Command::NotifyResult => f.write_str("email the owner the result of each target"),
            Command::CleanUp => f.write_str("remove the temporary export files"),
        }
    }
}

/// What a plan does, in one word (audit trail, `promoter plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    /// Approved: promote to every target, then unpublish or strip.
    Promote,
    /// `PromoteOnReload = True`: promote to every target, no approval, unpublish or strip.
    ReloadPromote,
    /// Denied: unpublish or strip, no promotion.
    Deny,
    /// `PromoteOnReload = True` seen on an update: tag the app for promotion on reload.
    TagForReload,
    /// Housekeeping only: remove the reload tag.
    Untag,
    /// Published: notify the stream's approvers.
    PublishReview,
}

impl PlanKind {
    /// Stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            PlanKind::Promote => "promote",
            PlanKind::ReloadPromote => "reload_promote",
            PlanKind::Deny => "deny",
            PlanKind::TagForReload => "tag_for_reload",
            PlanKind::Untag => "untag",
            PlanKind::PublishReview => "publish_review",
        }
    }
}

impl fmt::Display for PlanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ordered list of commands plus the facts they were decided from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// What the plan does.
    pub kind: PlanKind,
    /// The trigger the plan was decided for.
    pub trigger: Trigger,
    /// Source app id.
    pub app_id: String,
    /// Source app name.
    pub app_name: String,
    /// `modifiedDate` of the snapshot the plan was decided from.
    pub modified_date: String,
    /// Source app owner.
    pub owner: Owner,
    /// Source stream, if published.
    pub source_stream: Option<StreamRef>,
    /// Who approved or denied (the last modifier), when the plan is an approval or denial.
    pub approver: Option<String>,
    /// Every (site, stream) target, sites in configuration order, streams sorted.
    pub targets: Vec<Target>,
    /// Whether a version is stored.
    pub versioned: bool,
    /// Whether the source is unpublished afterwards.
    pub unpublish: bool,
    /// The steps, in order.
    pub commands: Vec<Command>,
    /// Remarks for the audit trail and `promoter plan` (ignored properties and the like).
    pub notes: Vec<String>,
}

impl Plan {
    /// The description written on every target app: where it came from, who approved it, when,
    /// the original owner and, when versioned, the version id. `source_host` names the source
    /// site (its host or alias).
    pub fn target_description(&self, source_host: &str, version_id: Option<&str>) -> String {
        let by = self.approver.as_deref().unwrap_or("unknown");
        let mut text = format!(
            "App promoted from node: '{source_host}' by: '{by}' at: '{}' where it was owned by: '{}'",
            self.modified_date,
            self.owner.account()
        );
        if let Some(v) = version_id {
            text.push_str(&format!("\n\nVersion ID: {v}"));
        }
        text
    }
}

/// Why nothing is to be done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// The app is not published.
    NotPublished,
    /// The app carries none of the promotion properties.
    NoPromotionProperties {
        /// The property names looked for.
        looked_for: Vec<String>,
    },
    /// Targets are set but `PromotionApproval` has no value.
    ApprovalNotSet {
        /// The approval property name.
        property: String,
    },
    /// `PromotionApproval` has a value that is neither an approve nor a deny value.
    UnrecognisedApproval {
        /// The value found.
        value: String,
        /// The accepted values (approve values, then deny values).
        accepted: Vec<String>,
    },
    /// `PromotionApproval` has both approve and deny values.
    ConflictingApproval {
        /// The values found, sorted.
        values: Vec<String>,
    },
    /// A `PromoteToServer` value is not `<alias> - Overwrite|Duplicate`.
    MalformedServerValue {
        /// The value found.
        value: String,
    },
    /// A `PromoteToServer` alias is not a configured target site.
    UnknownSite {
        /// The alias found.
        alias: String,
        /// The configured target aliases.
        configured: Vec<String>,
    },
    /// The same site is listed with both modes.
    ConflictingModes {
        /// The site alias (as configured).
        site: String,
    },
    /// Approved (or marked for reload) but `PromoteToServer` has no value.
    NoTargetSite {
        /// The server property name.
        property: String,
    },
    /// Approved (or marked for reload) but `PromoteToStream` has no value.
    NoTargetStream {
        /// The stream property name.
        property: String,
    },
    /// A True/False property has another value, or both.
    InvalidFlag {
        /// The property name.
        property: String,
        /// The value found.
        value: String,
    },
    /// A reload, but promote-on-reload is off in the configuration.
    ReloadPromotionDisabled,
    /// A reload, but the app does not carry `PromoteOnReload = True`.
    NotMarkedForReload {
        /// The property name.
        property: String,
    },
    /// An update of an app already tagged for promotion on reload: it waits for its next reload.
    AwaitingReload {
        /// The tag name.
        tag: String,
    },
    /// A publish, but email is off: there is nobody to notify.
    EmailDisabled,
}

impl Reason {
    /// Stable code for the store and the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::NotPublished => "not_published",
            Reason::NoPromotionProperties { .. } => "no_promotion_properties",
            Reason::ApprovalNotSet { .. } => "approval_not_set",
            Reason::UnrecognisedApproval { .. } => "unrecognised_approval",
            Reason::ConflictingApproval { .. } => "conflicting_approval",
            Reason::MalformedServerValue { .. } => "malformed_server_value",
            Reason::UnknownSite { .. } => "unknown_site",
            Reason::ConflictingModes { .. } => "conflicting_modes",
            Reason::NoTargetSite { .. } => "no_target_site",
            Reason::NoTargetStream { .. } => "no_target_stream",
            Reason::InvalidFlag { .. } => "invalid_flag",
            Reason::ReloadPromotionDisabled => "reload_promotion_disabled",
            Reason::NotMarkedForReload { .. } => "not_marked_for_reload",
            Reason::AwaitingReload { .. } => "awaiting_reload",
            Reason::EmailDisabled => "email_disabled",
        }
    }
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotPublished => f.write_str("the app is not published"),
            Reason::NoPromotionProperties { looked_for } => write!(
                f,
                "the app has no promotion properties (looked for {})",
                looked_for.join(", ")
            ),
            Reason::ApprovalNotSet { property } => {
                write!(f, "approval not set: {property} has no value")
            }
            Reason::UnrecognisedApproval { value, accepted } => write!(
                f,
                "unrecognised approval value \"{value}\" (accepted: {})",
                quoted(accepted)
            ),
            Reason::ConflictingApproval { values } => write!(
                f,
                "the approval property has both approve and deny values ({})",
                quoted(values)
            ),
            Reason::MalformedServerValue { value } => write!(
                f,
                "malformed PromoteToServer value \"{value}\" (expected \"<alias> - Overwrite\" or \"<alias> - Duplicate\")"
            ),
            Reason::UnknownSite { alias, configured } => write!(
                f,
                "unknown site alias \"{alias}\" (configured: {})",
                quoted(configured)
            ),
            Reason::ConflictingModes { site } => write!(
                f,
                "site \"{site}\" is listed with both Overwrite and Duplicate; keep one"
            ),
            Reason::NoTargetSite { property } => {
                write!(f, "no target site: {property} has no value")
            }
            Reason::NoTargetStream { property } => {
                write!(f, "no target stream: {property} has no value")
            }
            Reason::InvalidFlag { property, value } => write!(
                f,
                "{property} has the value \"{value}\" (expected True or False)"
            ),
            Reason::ReloadPromotionDisabled => f.write_str(
                "the app was reloaded but promote-on-reload is off (promotion.promote_on_reload)",
            ),
            Reason::NotMarkedForReload { property } => write!(
                f,
                "the app was reloaded but {property} is not True (approvals are handled on updates)"
            ),
            Reason::AwaitingReload { tag } => write!(
                f,
                "the app is tagged \"{tag}\" and is promoted after each reload; nothing to do on an update"
            ),
            Reason::EmailDisabled => {
                f.write_str("the app was published but email is off: nobody to notify")
            }
        }
    }
}

/// The outcome of [`crate::engine::decide::decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
// One decision per event, moved a few times: the size difference does not matter, and an
// unboxed plan keeps matching simple for callers.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// Something is to be done.
    Plan(Plan),
    /// Nothing is to be done, and why.
    Nothing(Reason),
}

impl Decision {
    /// The plan, if any.
    pub fn plan(&self) -> Option<&Plan> {
        match self {
            Decision::Plan(p) => Some(p),
            Decision::Nothing(_) => None,
        }
    }

    /// The reason, if nothing is to be done.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Decision::Plan(_) => None,
            Decision::Nothing(r) => Some(r),
        }
    }
}
