//! What happens to the source app on the local site: unpublish (copy to the owner, delete the
//! published app), strip the promotion properties, tag or untag it for promotion on reload.
//!
//! Every write to the source app is recorded as an own write (`store.own_write_put` with the
//! `modifiedDate` QRS returned), so the change notification it causes starts nothing.

use serde_json::Value;

use super::super::executor::{Done, JobRun, JobState, StepError, temp_name};
use super::super::model::Command;
use crate::qrs::{App, Filter, TagRef};

/// Records that the promoter itself produced this version of the app.
async fn own_write(run: &JobRun, app: &App) -> Result<(), StepError> {
    if !app.modified_date.is_empty() {
        run.store()
            .own_write_put(&app.id, &app.modified_date)
            .await?;
    }
    Ok(())
}

/// The promotion property names a copy given back to the owner must not carry (it would be
/// promoted again as soon as it is republished).
fn promotion_properties(run: &JobRun) -> Vec<String> {
    let p = &run.settings().properties;
    [
        &p.promote_to_server,
        &p.promote_to_stream,
        &p.approval,
        &p.versioning,
        &p.unpublish,
    ]
    .into_iter()
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
    .collect()
}

/// `UnpublishSource`: copy the app (unpublished, into the owner's work, under its name and
/// without the promotion properties), then delete the published app.
pub(crate) async fn unpublish(run: &JobRun) -> Result<(), StepError> {
    let cmd = Command::UnpublishSource;
    run.step(&cmd.step_key(), &cmd.to_string(), async {
        let local = run.local();
        let source = &run.plan.app_id;
        let state = run.state().await;
        let mut copy_id = None;
        if let Some(id) = &state.source_copy
            && local.find_app(id).await?.is_some()
        {
            copy_id = Some(id.clone());
        }
        let name = temp_name(run.id(), local.alias(), 0);
        if copy_id.is_none() && state.local_creating.contains(&name) {
            let mut found: Vec<App> = local
                .apps(Some(&Filter::eq("name", &name)))
                .await?
                .into_iter()
                .filter(|a| a.name == name)
                .collect();
            if !found.is_empty() {
                let keep = found.remove(0);
                for extra in found {
                    let _ = local.delete_app(&extra.id).await;
                }
                copy_id = Some(keep.id);
            }
        }
        let copy_id = match copy_id {
            Some(id) => id,
            None => {
                if local.find_app(source).await?.is_none() {
                    return Err(StepError::fatal(format!(
                        "the source app {source} no longer exists; nothing to unpublish"
                    )));
                }
                run.update_state(|s: &mut JobState| {
                    s.local_creating.insert(name.clone());
                })
                .await?;
                let id = local.copy_app(source, Some(&name)).await?.id;
                super::super::fault::point("source-copied");
                id
            }
        };
        run.update_state(|s: &mut JobState| {
            s.source_copy = Some(copy_id.clone());
            s.local_creating.remove(&name);
        })
        .await?;
        let app_name = run.plan.app_name.clone();
        let owner = run.plan.owner.id.clone();
        let strip = promotion_properties(run);
        let copy = local
            .update_app(&copy_id, move |v: &mut Value| {
                if let Some(o) = v.as_object_mut() {
                    o.insert("name".into(), Value::String(app_name.clone()));
                }
                if !owner.is_empty() {
                    crate::qrs::edit::set_owner(v, &owner);
                }
                let names: Vec<&str> = strip.iter().map(String::as_str).collect();
                crate::qrs::edit::strip_properties(v, &names);
            })
            .await?;
        own_write(run, &copy).await?;
        match local.delete_app(source).await {
            Ok(()) => super::super::fault::point("source-deleted"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Done::ok(format!(
            "copied to {}'s work as app {copy_id}; the published app was deleted",
            run.plan.owner.account()
        ))
        .with_id(copy_id))
    })
    .await?;
    Ok(())
}

/// `StripPromotionProperties`: one GET + PUT removing the properties.
pub(crate) async fn strip(run: &JobRun, properties: &[String]) -> Result<(), StepError> {
    let cmd = Command::StripPromotionProperties {
        properties: properties.to_vec(),
    };
    run.step(&cmd.step_key(), &cmd.to_string(), async {
        let names: Vec<&str> = properties.iter().map(String::as_str).collect();
        let app = run
            .local()
            .strip_app_properties(&run.plan.app_id, &names)
            .await?;
        own_write(run, &app).await?;
        Ok(Done::ok(format!("removed {}", properties.join(", "))))
    })
    .await?;
    Ok(())
}

/// `TagForReload`: tag the app (creating the tag if it does not exist).
pub(crate) async fn tag(run: &JobRun, tag: &str) -> Result<(), StepError> {
    let cmd = Command::TagForReload {
        tag: tag.to_string(),
    };
    run.step(&cmd.step_key(), &cmd.to_string(), async {
        let local = run.local();
        let t = local.find_or_create_tag(tag).await?;
        let app = local
            .add_app_tag(&run.plan.app_id, &TagRef::from(&t))
            .await?;
        own_write(run, &app).await?;
        Ok(Done::ok(format!("tagged \"{tag}\"")))
    })
    .await?;
    Ok(())
}

/// `UntagForReload`: remove the tag from the app.
pub(crate) async fn untag(run: &JobRun, tag: &str) -> Result<(), StepError> {
    let cmd = Command::UntagForReload {
        tag: tag.to_string(),
    };
    run.step(&cmd.step_key(), &cmd.to_string(), async {
        let app = run.local().remove_app_tag(&run.plan.app_id, tag).await?;
        own_write(run, &app).await?;
        Ok(Done::ok(format!("removed the tag \"{tag}\"")))
    })
    .await?;
    Ok(())
}

/// After a job failed for good with the source app still in place: removes the copy the
/// unpublish step made (or was making), so the source is left exactly as it was.
pub(crate) async fn discard_copy(run: &JobRun) -> Result<(), StepError> {
    let local = run.local();
    if local.find_app(&run.plan.app_id).await?.is_none() {
        // The source is gone: the copy is the owner's app now.
        return Ok(());
    }
    let state = run.state().await;
    let mut ids: Vec<String> = state.source_copy.iter().cloned().collect();
    for name in &state.local_creating {
        ids.extend(
            local
                .apps(Some(&Filter::eq("name", name)))
                .await?
                .into_iter()
                .filter(|a| &a.name == name)
                .map(|a| a.id),
        );
    }
    for id in ids {
        match local.delete_app(&id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    run.update_state(|s: &mut JobState| {
        s.source_copy = None;
        s.local_creating.clear();
    })
    .await?;
    Ok(())
}
