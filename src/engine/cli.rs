//! `promoter plan|promote|jobs|restore`.
use crate::config::Settings;

/// `promoter promote`, `jobs` and `restore` live with the executor they drive.
pub use crate::engine::commands::{jobs, promote, restore};

/// `promoter plan --app ID`; returns whether a plan could be made.
///
/// Read-only by construction: it only ever holds [`crate::qrs::QrsReader`]s (GETs) and never
/// opens the store, so nothing is written anywhere.
pub async fn plan(settings: &Settings, app: &str) -> anyhow::Result<bool> {
    // Boxed: keeps the CLI's combined future shallow.
    Box::pin(plan_run(settings, app)).await
}

async fn plan_run(settings: &Settings, app: &str) -> anyhow::Result<bool> {
    use crate::engine::decide::decide;
    use crate::engine::model::{Decision, DecisionConfig, Trigger};
    use anyhow::Context;

    let local = crate::qrs::QrsReader::new(&settings.local, &settings.qrs)?;
    let snap = crate::engine::snapshot::load(&local, app.trim())
        .await
        .with_context(|| format!("cannot read app {} on the local site", app.trim()))?;
    let cfg = DecisionConfig::from_settings(settings);
    let decision = decide(&snap, Trigger::Manual, &cfg);
    let mut out = plan_header(&snap, &settings.local.alias);
    let made = match &decision {
        Decision::Nothing(reason) => {
            out.push_str(&format!("Nothing to do: {reason}.\n"));
            false
        }
        Decision::Plan(p) => {
            let mut resolved = Vec::new();
            for t in &p.targets {
                resolved.push(plan_resolve_target(settings, &p.app_name, t).await);
            }
            out.push_str(&plan_render(p, &resolved));
            true
        }
    };
    out.push_str("\nDry run: nothing was written (QRS was only read; the store was not opened).\n");
    print!("{out}");
    Ok(made)
}

/// The app's facts, as `promoter plan` prints them first.
fn plan_header(snap: &crate::engine::model::AppSnapshot, site: &str) -> String {
    let mut out = format!(
        "App \"{}\" ({}) on site \"{site}\"\n  owner: {} ({})\n",
        snap.name,
        snap.id,
        snap.owner.account(),
        snap.owner.email.as_deref().unwrap_or("no email address"),
    );
    match (&snap.stream, snap.published) {
        (Some(s), true) => out.push_str(&format!("  published in stream \"{}\"\n", s.name)),
        _ => out.push_str("  not published\n"),
    }
    out.push_str(&format!(
        "  last modified {} by {}\n",
        snap.modified_date,
        snap.modified_by.as_deref().unwrap_or("(unknown)")
    ));
    if snap.custom_properties.is_empty() {
        out.push_str("  custom properties: none\n");
    } else {
        let mut props: Vec<String> = snap
            .custom_properties
            .iter()
            .map(|(n, v)| format!("{n} = {v}"))
            .collect();
        props.sort();
        out.push_str(&format!("  custom properties: {}\n", props.join("; ")));
    }
    if !snap.tags.is_empty() {
        out.push_str(&format!("  tags: {}\n", snap.tags.join(", ")));
    }
    out
}

/// What a target will do, found by reading the target site (GETs only). Never fails: a site
/// that cannot be read is reported in the line.
async fn plan_resolve_target(
    settings: &Settings,
    app_name: &str,
    t: &crate::engine::model::Target,
) -> String {
    use crate::engine::model::Mode;
    use crate::qrs::{Filter, QrsReader};

    let Some(site) = settings.remote(&t.site) else {
        return format!("site \"{}\" is not configured", t.site);
    };
    let reader = match QrsReader::new(site, &settings.qrs) {
        Ok(r) => r,
        Err(e) => return format!("cannot check the site: {e}"),
    };
    let streams = match reader.streams_named(&t.stream).await {
        Ok(s) => s,
        Err(e) => return format!("cannot check the site: {e}"),
    };
    let stream = match streams.as_slice() {
        [s] => s,
        [] => {
            return format!(
                "stream \"{}\" does not exist on site \"{}\": this target will be reported as missing; the others still run",
                t.stream, t.site
            );
        }
        many => {
            return format!(
                "{} streams are named \"{}\" on site \"{}\": this target will fail",
                many.len(),
                t.stream,
                t.site
            );
        }
    };
    if t.mode == Mode::Duplicate {
        return format!("publishes a new app into stream {}", stream.id);
    }
    let apps = match reader.apps(Some(&Filter::eq("name", app_name))).await {
        Ok(a) => a,
        Err(e) => return format!("cannot check the stream's apps: {e}"),
    };
    let same: Vec<&crate::qrs::App> = apps
        .iter()
        .filter(|a| {
            a.published
                && a.name.eq_ignore_ascii_case(app_name)
                && a.stream
                    .as_ref()
                    .is_some_and(|s| s.id.eq_ignore_ascii_case(&stream.id))
        })
        .collect();
    match same.as_slice() {
        [] => format!("publishes a new app (no published app named \"{app_name}\" in the stream)"),
        [a] => format!(
            "replaces app {} in place (it keeps its id), unless an earlier promotion recorded another target",
            a.id
        ),
        many => format!(
            "{} published apps are named \"{app_name}\" in the stream ({}): this target will fail unless an earlier promotion recorded which one",
            many.len(),
            many.iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The plan, step by step, with each target's resolution (`resolved[i]` for `p.targets[i]`).
fn plan_render(p: &crate::engine::model::Plan, resolved: &[String]) -> String {
    use crate::engine::model::Command;

    let mut out = format!("Decision: {} (trigger: {})\n", p.kind, p.trigger);
    if let Some(a) = &p.approver {
        out.push_str(&format!("  decided by: {a}\n"));
    }
    if !p.targets.is_empty() {
        out.push_str("Targets:\n");
        for (t, r) in p.targets.iter().zip(resolved) {
            out.push_str(&format!(
                "  - {} / \"{}\" ({}): {r}\n",
                t.site, t.stream, t.mode
            ));
        }
    }
    out.push_str("Steps:\n");
    for (i, c) in p.commands.iter().enumerate() {
        // Promotions are described once, resolved, under Targets.
        let what = match c {
            Command::PromoteTo {
                site,
                stream_name,
                mode,
            } => format!("promote to site \"{site}\", stream \"{stream_name}\" ({mode})"),
            other => other.to_string(),
        };
        out.push_str(&format!("  {:>2}. {what}  [{}]\n", i + 1, c.step_key()));
    }
    if !p.notes.is_empty() {
        out.push_str("Notes:\n");
        for n in &p.notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    out
}
