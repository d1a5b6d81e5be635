//! The pure decision core: from an app snapshot, a trigger and the configuration, either a
//! [`Plan`] (ordered commands) or the [`Reason`] nothing is to be done.
//!
//! No I/O, no clock, no randomness: the same inputs always give the same decision, and the order
//! of the custom properties on the app never changes it (every multi-valued property is sorted
//! before it is read, and errors are reported for the first offending value in that order).
//!
//! # Triggers
//! - [`Trigger::AppPublished`]: a publish-review notice (the executor checks the stream's
//!   `EmailAlertOnPublishTo` property and its approvers). Never promotes.
//! - [`Trigger::AppReloaded`]: the promote-on-reload path only (reference §5.5): promotes when
//!   promote-on-reload is on and the app carries `PromoteOnReload = True` plus targets. The tag is
//!   not required (as in the reference); it only suppresses the results email.
//! - [`Trigger::AppUpdated`], [`Trigger::Sweep`]: the approval path, plus tag housekeeping for
//!   promote-on-reload.
//! - [`Trigger::Manual`]: as an update, except that an app marked `PromoteOnReload = True` is
//!   promoted now (as a reload would) instead of only being tagged.
//!
//! # The reference decision table (§5.3), row by row
//! - A (approved + server + stream on an update, or `PromoteOnReload` + server + stream on a
//!   reload): [`PlanKind::Promote`] / [`PlanKind::ReloadPromote`].
//! - B (denied, unpublish by configuration or property): [`PlanKind::Deny`] with
//!   [`Command::UnpublishSource`].
//! - C (denied, keep published): [`PlanKind::Deny`] with [`Command::StripPromotionProperties`].
//! - D (anything else): [`Decision::Nothing`] with the reason.
//! - After the branch, an app tagged for reload without `PromoteOnReload = True` is untagged
//!   ([`Command::UntagForReload`]), except when it is being unpublished (the reference crashed on
//!   the deleted app there).
//!
//! # Loop avoidance (the executor's part)
//! The promoter's own writes to the source app come back as update notifications. `decide` is
//! loop-free by itself: after a strip the app has no promotion properties (`Nothing`); after a
//! tag it is tagged with `PromoteOnReload = True` (`Nothing`: awaiting reload); after an untag it
//! has neither; an unpublished copy is not published (`Nothing`). On top of that, the executor
//! records `store.own_write_put(app_id, modified_date)` with the `modifiedDate` QRS returns for
//! every PUT it makes to a source app ([`Command::writes_source`]), and drops a notification
//! whose fresh snapshot has `store.own_write_seen(app_id, snapshot.modified_date)` before calling
//! `decide`, so its own writes never even produce a recorded decision.
//!
//! # Defects of the reference fixed here (§13)
//! Each is marked `Fixed (§13)` where it is handled.

use std::collections::BTreeMap;

use super::model::{
    AppSnapshot, Command, Decision, DecisionConfig, Mode, Plan, PlanKind, Reason, Target, Trigger,
};

/// Decides what to do for `app` on `trigger`.
pub fn decide(app: &AppSnapshot, trigger: Trigger, cfg: &DecisionConfig) -> Decision {
    if !app.published {
        return Decision::Nothing(Reason::NotPublished);
    }
    let d = Decider {
        app,
        cfg,
        trigger,
        notes: Vec::new(),
    };
    match trigger {
        Trigger::AppPublished => d.publish_review(),
        Trigger::AppReloaded => d.reloaded(),
        Trigger::AppUpdated | Trigger::Sweep | Trigger::Manual => d.updated(),
    }
}

struct Decider<'a> {
    app: &'a AppSnapshot,
    cfg: &'a DecisionConfig,
    trigger: Trigger,
    notes: Vec<String>,
}

enum Approval {
    Approve,
    Deny,
}

impl Decider<'_> {
    fn publish_review(mut self) -> Decision {
        if self.app.stream.is_none() {
            return Decision::Nothing(Reason::NotPublished);
        }
        if !self.cfg.email_enabled {
            return Decision::Nothing(Reason::EmailDisabled);
        }
        self.plan(
            PlanKind::PublishReview,
            None,
            vec![],
            false,
            false,
            vec![Command::NotifyPublishReview],
        )
    }

    fn reloaded(mut self) -> Decision {
        if !self.cfg.promote_on_reload {
            return Decision::Nothing(Reason::ReloadPromotionDisabled);
        }
        match self.reload_flag() {
            Err(r) => return Decision::Nothing(r),
            Ok(false) => {
                return Decision::Nothing(Reason::NotMarkedForReload {
                    property: self.cfg.properties.promote_on_reload.clone(),
                });
            }
            Ok(true) => {}
        }
        // Fixed (§13): the reference sent the denial email while parsing, on reloads too. A
        // reload looks at nothing but the reload properties, so it never mails a denial.
        match self.targets() {
            Ok(t) => self.reload_promote(t, false),
            Err(r) => Decision::Nothing(r),
        }
    }

    fn updated(mut self) -> Decision {
        let cfg = self.cfg;
        let props = &cfg.properties;
        let tagged = cfg.promote_on_reload && self.app.has_tag(&cfg.reload_tag);
        let reload_present = !self.values(&props.promote_on_reload).is_empty();
        if reload_present && !cfg.promote_on_reload {
            // Fixed (§13): the reference's warning named the wrong property.
            self.notes.push(format!(
                "{} is ignored: promote-on-reload is off (promotion.promote_on_reload)",
                props.promote_on_reload
            ));
        }

        let mut looked_for = vec![
            props.promote_to_server.clone(),
            props.promote_to_stream.clone(),
            props.approval.clone(),
        ];
        if cfg.promote_on_reload {
            looked_for.push(props.promote_on_reload.clone());
        }
        let any = looked_for.iter().any(|n| !self.values(n).is_empty());
        if !any {
            return self.untag_or(
                tagged,
                Reason::NoPromotionProperties {
                    looked_for: looked_for
                        .into_iter()
                        .filter(|n| !n.trim().is_empty())
                        .collect(),
                },
            );
        }

        let reload = if cfg.promote_on_reload {
            match self.reload_flag() {
                Ok(v) => v,
                Err(r) => return self.untag_or(tagged, r),
            }
        } else {
            false
        };

        if reload {
            // Fixed (§13): the reference skipped PromotionApproval only when PromoteOnReload came
            // first in the property array. Here PromoteOnReload = True always wins, whatever the
            // order, and the approval is ignored.
            if !self.values(&props.approval).is_empty() {
                self.notes.push(format!(
                    "{} is ignored: the app is promoted on each reload ({} = True)",
                    props.approval, props.promote_on_reload
                ));
            }
            let targets = match self.targets() {
                Ok(t) => t,
                Err(r) => return Decision::Nothing(r),
            };
            if self.trigger == Trigger::Manual {
                return self.reload_promote(targets, !tagged);
            }
            if tagged {
                return Decision::Nothing(Reason::AwaitingReload {
                    tag: cfg.reload_tag.clone(),
                });
            }
            let tag = Command::TagForReload {
                tag: cfg.reload_tag.clone(),
            };
            // Nothing is promoted now: the targets are only named in a note.
            let names: Vec<String> = targets
                .iter()
                .map(|t| format!("{} / \"{}\" ({})", t.site, t.stream, t.mode))
                .collect();
            self.notes.push(format!(
                "promoted after each reload to: {}",
                names.join(", ")
            ));
            return self.plan(
                PlanKind::TagForReload,
                None,
                vec![],
                false,
                false,
                vec![tag],
            );
        }

        let decision = match self.approval() {
            Err(r) => Decision::Nothing(r),
            Ok(None) => Decision::Nothing(Reason::ApprovalNotSet {
                property: props.approval.clone(),
            }),
            Ok(Some(Approval::Deny)) => self.deny(),
            Ok(Some(Approval::Approve)) => self.approve(),
        };
        match decision {
            Decision::Nothing(r) => self.untag_or(tagged, r),
            Decision::Plan(mut p) => {
                if tagged && !p.unpublish {
                    // The app stays: take the reload tag off right after the strip. Fixed (§13):
                    // never after an unpublish, where the app is gone.
                    let untag = Command::UntagForReload {
                        tag: cfg.reload_tag.clone(),
                    };
                    let at = p
                        .commands
                        .iter()
                        .position(|c| matches!(c, Command::StripPromotionProperties { .. }))
                        .map_or(p.commands.len(), |i| i + 1);
                    p.commands.insert(at, untag);
                }
                Decision::Plan(p)
            }
        }
    }

    /// The approve branch (row A on an update).
    fn approve(&mut self) -> Decision {
        let targets = match self.targets() {
            Ok(t) => t,
            Err(r) => return Decision::Nothing(r),
        };
        let versioned = match self.versioned() {
            Ok(v) => v,
            Err(r) => return Decision::Nothing(r),
        };
        let unpublish = match self.unpublish() {
            Ok(v) => v,
            Err(r) => return Decision::Nothing(r),
        };
        let mut commands = Vec::new();
        if self.cfg.email_enabled {
            commands.push(Command::NotifyApproved);
        }
        // Fixed (§13): one export per job, before and independent of the targets (the reference
        // exported only for the first server).
        commands.extend(self.transfer(&targets, versioned));
        commands.push(self.after_decision(unpublish));
        // Fixed (§13): the reference sent the results email even with email off.
        if self.cfg.email_enabled {
            commands.push(Command::NotifyResult);
        }
        commands.push(Command::CleanUp);
        let approver = self.app.modified_by.clone();
        self.plan(
            PlanKind::Promote,
            approver,
            targets,
            versioned,
            unpublish,
            commands,
        )
    }

    /// The deny branches (rows B and C).
    fn deny(&mut self) -> Decision {
        let unpublish = match self.unpublish() {
            Ok(v) => v,
            Err(r) => return Decision::Nothing(r),
        };
        let mut commands = Vec::new();
        // Fixed (§13): the denial email is an outcome of the decision, once, on updates only.
        if self.cfg.email_enabled {
            commands.push(Command::NotifyDenied);
        }
        commands.push(self.after_decision(unpublish));
        let approver = self.app.modified_by.clone();
        self.plan(PlanKind::Deny, approver, vec![], false, unpublish, commands)
    }

    /// Row A on a reload (or a manual run of a reload-promoted app): no approval, no unpublish,
    /// no strip, no approval email. The results email goes out only while the app is not yet
    /// tagged, as in the reference.
    fn reload_promote(&mut self, targets: Vec<Target>, tag_first: bool) -> Decision {
        let versioned = match self.versioned() {
            Ok(v) => v,
            Err(r) => return Decision::Nothing(r),
        };
        let tagged = self.app.has_tag(&self.cfg.reload_tag);
        let mut commands = Vec::new();
        if tag_first {
            commands.push(Command::TagForReload {
                tag: self.cfg.reload_tag.clone(),
            });
        }
        commands.extend(self.transfer(&targets, versioned));
        if self.cfg.email_enabled && !tagged {
            commands.push(Command::NotifyResult);
        }
        commands.push(Command::CleanUp);
        self.plan(
            PlanKind::ReloadPromote,
            None,
            targets,
            versioned,
            false,
            commands,
        )
    }

    fn transfer(&self, targets: &[Target], versioned: bool) -> Vec<Command> {
        let mut commands = vec![Command::ExportSource { skip_data: false }];
        if versioned {
            commands.push(Command::ExportSource { skip_data: true });
            commands.push(Command::StoreVersion);
        }
        commands.extend(targets.iter().map(|t| Command::PromoteTo {
            site: t.site.clone(),
            stream_name: t.stream.clone(),
            mode: t.mode,
        }));
        commands
    }

    /// Unpublish or strip, after an approval or denial.
    fn after_decision(&self, unpublish: bool) -> Command {
        if unpublish {
            Command::UnpublishSource
        } else {
            Command::StripPromotionProperties {
                properties: self.strip_list(),
            }
        }
    }

    /// The properties stripped after an approval or denial (the reference's `PROP_LIST`):
    /// never `PromoteOnReload`.
    fn strip_list(&self) -> Vec<String> {
        let p = &self.cfg.properties;
        let mut out: Vec<String> = Vec::new();
        for n in [
            &p.promote_to_server,
            &p.promote_to_stream,
            &p.approval,
            &p.versioning,
            &p.unpublish,
        ] {
            let n = n.trim();
            if !n.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                out.push(n.to_string());
            }
        }
        out
    }

    /// A housekeeping plan that removes the reload tag, or nothing.
    fn untag_or(&mut self, tagged: bool, reason: Reason) -> Decision {
        if !tagged {
            return Decision::Nothing(reason);
        }
        let tag = self.cfg.reload_tag.clone();
        self.notes.push(reason.to_string());
        self.plan(
            PlanKind::Untag,
            None,
            vec![],
            false,
            false,
            vec![Command::UntagForReload { tag }],
        )
    }

    fn plan(
        &mut self,
        kind: PlanKind,
        approver: Option<String>,
        targets: Vec<Target>,
        versioned: bool,
        unpublish: bool,
        commands: Vec<Command>,
    ) -> Decision {
        Decision::Plan(Plan {
            kind,
            trigger: self.trigger,
            app_id: self.app.id.clone(),
            app_name: self.app.name.clone(),
            modified_date: self.app.modified_date.clone(),
            owner: self.app.owner.clone(),
            source_stream: self.app.stream.clone(),
            approver,
            targets,
            versioned,
            unpublish,
            commands,
            notes: std::mem::take(&mut self.notes),
        })
    }

    /// The trimmed, non-empty values of a property, sorted (so order never matters).
    fn values(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .app
            .property_values(name)
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// A True/False property: `None` when absent. Fixed (§13): exact True/False (any case); the
    /// reference took any value containing "true" for `PromotionUnpublish`.
    fn flag(&self, name: &str) -> Result<Option<bool>, Reason> {
        let mut seen = None;
        for v in self.values(name) {
            let b = if v.eq_ignore_ascii_case("true") {
                true
            } else if v.eq_ignore_ascii_case("false") {
                false
            } else {
                return Err(Reason::InvalidFlag {
                    property: name.to_string(),
                    value: v,
                });
            };
            match seen {
                Some(prev) if prev != b => {
                    return Err(Reason::InvalidFlag {
                        property: name.to_string(),
                        value: "True and False".into(),
                    });
                }
                _ => seen = Some(b),
            }
        }
        Ok(seen)
    }

    fn reload_flag(&self) -> Result<bool, Reason> {
        Ok(self.flag(&self.cfg.properties.promote_on_reload)? == Some(true))
    }

    /// Whether a version is stored. Fixed (§13): always defined (the reference's
    /// `AUTO_VERSIONING` NameError).
    fn versioned(&mut self) -> Result<bool, Reason> {
        let name = &self.cfg.properties.versioning;
        if !self.cfg.versioning_enabled {
            if !self.values(name).is_empty() {
                self.notes.push(format!(
                    "{name} is ignored: versioning is off (versioning.enabled)"
                ));
            }
            return Ok(false);
        }
        let prop = self.flag(name)?;
        Ok(self.cfg.versioning_auto || prop == Some(true))
    }

    /// Whether the source is unpublished after an approval or denial.
    fn unpublish(&mut self) -> Result<bool, Reason> {
        let name = &self.cfg.properties.unpublish;
        if self.cfg.auto_unpublish {
            if !self.values(name).is_empty() {
                self.notes.push(format!(
                    "{name} is ignored: every approved or denied app is unpublished (promotion.auto_unpublish)"
                ));
            }
            return Ok(true);
        }
        Ok(self.flag(name)? == Some(true))
    }

    /// Fixed (§13): exact, case-insensitive values from the configuration; the reference tested
    /// substrings ("approve", "den").
    fn approval(&self) -> Result<Option<Approval>, Reason> {
        let cfg = self.cfg;
        let norm = |s: &str| s.trim().to_lowercase();
        let (mut approve, mut deny) = (false, false);
        for v in self.values(&cfg.properties.approval) {
            let n = norm(&v);
            if cfg.approve_values.iter().any(|a| norm(a) == n) {
                approve = true;
            } else if cfg.deny_values.iter().any(|d| norm(d) == n) {
                deny = true;
            } else {
                let accepted = cfg
                    .approve_values
                    .iter()
                    .chain(&cfg.deny_values)
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                return Err(Reason::UnrecognisedApproval { value: v, accepted });
            }
        }
        match (approve, deny) {
            (true, true) => Err(Reason::ConflictingApproval {
                values: self.values(&cfg.properties.approval),
            }),
            (true, false) => Ok(Some(Approval::Approve)),
            (false, true) => Ok(Some(Approval::Deny)),
            (false, false) => Ok(None),
        }
    }

    /// Every (site, stream) target: sites in configuration order, streams sorted and
    /// de-duplicated without regard to case (QRS compares names that way).
    fn targets(&self) -> Result<Vec<Target>, Reason> {
        let props = &self.cfg.properties;
        let sites = self.sites()?;
        if sites.is_empty() {
            return Err(Reason::NoTargetSite {
                property: props.promote_to_server.clone(),
            });
        }
        let mut streams = self.values(&props.promote_to_stream);
        streams.sort_by_key(|s| (s.to_lowercase(), s.clone()));
        streams.dedup_by(|a, b| a.to_lowercase() == b.to_lowercase());
        if streams.is_empty() {
            return Err(Reason::NoTargetStream {
                property: props.promote_to_stream.clone(),
            });
        }
        Ok(sites
            .iter()
            .flat_map(|(site, mode)| {
                streams.iter().map(move |s| Target {
                    site: site.clone(),
                    stream: s.clone(),
                    mode: *mode,
                })
            })
            .collect())
    }

    /// The target sites with their modes, in configuration order. Fixed (§13): the mode is the
    /// text after the last `-` (so aliases may contain `-` and spaces; for well-formed values this
    /// is the text after the last " - "); the alias must be configured; a site listed twice with
    /// the same mode is promoted once (the reference promoted it twice).
    fn sites(&self) -> Result<Vec<(String, Mode)>, Reason> {
        let mut chosen: BTreeMap<usize, Mode> = BTreeMap::new();
        for v in self.values(&self.cfg.properties.promote_to_server) {
            let (alias, mode) = parse_server_value(&v)
                .ok_or_else(|| Reason::MalformedServerValue { value: v.clone() })?;
            let wanted = alias.to_lowercase();
            let idx = self
                .cfg
                .remote_aliases
                .iter()
                .position(|a| a.trim().to_lowercase() == wanted)
                .ok_or_else(|| Reason::UnknownSite {
                    alias: alias.to_string(),
                    configured: self.cfg.remote_aliases.clone(),
                })?;
            match chosen.get(&idx) {
                Some(m) if *m != mode => {
                    return Err(Reason::ConflictingModes {
                        site: self.cfg.remote_aliases[idx].clone(),
                    });
                }
                _ => {
                    chosen.insert(idx, mode);
                }
            }
        }
        Ok(chosen
            .into_iter()
            .map(|(i, m)| (self.cfg.remote_aliases[i].clone(), m))
            .collect())
    }
}

/// Parses `"<alias> - Overwrite"` / `"<alias> - Duplicate"` (mode in any case): the alias, trimmed,
/// and the mode. `None` when the value has no `-`, an empty alias, or another mode.
pub fn parse_server_value(value: &str) -> Option<(&str, Mode)> {
    let (alias, mode) = value.rsplit_once('-')?;
    let alias = alias.trim();
    let mode = mode.trim();
    if alias.is_empty() {
        return None;
    }
    let mode = if mode.eq_ignore_ascii_case("overwrite") {
        Mode::Overwrite
    } else if mode.eq_ignore_ascii_case("duplicate") {
        Mode::Duplicate
    } else {
        return None;
    };
    Some((alias, mode))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
