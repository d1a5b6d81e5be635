//! Export once, promote to every (site, stream) target, clean up.
//!
//! Per target site the export is uploaded once, as a temporary app with a unique name. An
//! overwrite target is replaced from it (the target keeps its id); a new target gets a copy of
//! it (copied on the site, no second upload), published under the app's name. The temporary
//! app is deleted when every target of the site is done. Sites run concurrently, each upload
//! holding one of the site's transfer slots.

use std::path::{Path, PathBuf};

use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;

use super::super::executor::{
    Done, FileRecord, JobRun, JobState, StepError, TargetRecord, temp_name,
};
use super::super::fault;
use super::super::model::{Command, Mode};
use crate::qrs::{App, Filter, QrsClient, Stream};

/// Buffer for writing fetched versions.
const FILE_BUF: usize = 256 * 1024;

/// The job's file for an export (`job-<id>-data.qvf` / `job-<id>-nodata.qvf` in the work
/// folder): unique per job, never derived from the app's name.
pub(crate) fn export_path(run: &JobRun, skip_data: bool) -> PathBuf {
    let which = if skip_data { "nodata" } else { "data" };
    run.settings()
        .data
        .work_dir()
        .join(format!("job-{}-{which}.qvf", run.id()))
}

/// Key of a target stream within a site (QRS compares stream names without regard to case).
fn stream_key(stream: &str) -> String {
    stream.trim().to_lowercase()
}

fn site_key(site: &str) -> String {
    site.trim().to_lowercase()
}

/// Whether every step that reads the export file has a final result.
async fn consumers_done(run: &JobRun, skip_data: bool) -> Result<bool, StepError> {
    for c in &run.plan.commands {
        let reads = match c {
            Command::PromoteTo { .. } => !skip_data,
            Command::StoreVersion => skip_data,
            _ => false,
        };
        if reads
            && run
                .store()
                .step_result(run.id(), &c.step_key())
                .await?
                .is_none_or(|s| !matches!(s.outcome.as_str(), "ok" | "skipped" | "failed"))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `ExportSource`: exports the source app (or, for a restore, fetches the stored version) into
/// the job's file, streamed. Done once per job; a recorded export whose file is gone is made
/// again while a step still needs it.
pub(crate) async fn export(run: &JobRun, skip_data: bool) -> Result<(), StepError> {
    let cmd = Command::ExportSource { skip_data };
    let key = cmd.step_key();
    let detail = cmd.to_string();
    if let Some(rec) = run.recorded::<FileRecord>(&key).await? {
        let present = tokio::fs::metadata(&rec.path)
            .await
            .is_ok_and(|m| m.len() == rec.bytes);
        if present || consumers_done(run, skip_data).await? {
            return Ok(());
        }
        tracing::info!(job = %run.id(), "the export file {} is gone; exporting again", rec.path.display());
        run.run_step(&key, &detail, do_export(run, skip_data))
            .await?;
        return Ok(());
    }
    run.step(&key, &detail, do_export(run, skip_data)).await?;
    Ok(())
}

async fn do_export(run: &JobRun, skip_data: bool) -> Result<FileRecord, StepError> {
    let path = export_path(run, skip_data);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| {
            StepError::fatal(format!(
                "cannot create the work folder {}: {e}",
                dir.display()
            ))
        })?;
    }
    run.update_state(|s| {
        s.files.insert(path.clone());
    })
    .await?;
    let local = run.local();
    let permit = run
        .engine
        .site_limit(local.alias())
        .acquire_owned()
        .await
        .map_err(|_| StepError::Cancelled)?;
    let bytes = match &run.restore {
        Some(r) => {
            let label = format!("fetch {}", r.version_id);
            fetch_version(run, &r.app_id, &r.version_id, &path, &label).await?
        }
        None => {
            let progress = fault::mid_transfer(
                "mid-export",
                run.engine
                    .progress()
                    .map(|f| f(&format!("export {}", local.alias()))),
            );
            local
                .download_app_to_file(&run.plan.app_id, skip_data, &path, progress)
                .await?
        }
    };
    drop(permit);
    Ok(FileRecord { path, bytes })
}

/// Copies a stored version into `path`, streamed.
async fn fetch_version(
    run: &JobRun,
    app_id: &str,
    version_id: &str,
    path: &Path,
    label: &str,
) -> Result<u64, StepError> {
    let (mut reader, size) = run.engine.hooks().open_version(app_id, version_id).await?;
    let io = |e: std::io::Error| StepError::Retry {
        message: format!(
            "cannot copy version {version_id} to {}: {e}",
            path.display()
        ),
        retry_after: None,
    };
    let file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut out = tokio::io::BufWriter::with_capacity(FILE_BUF, file);
    let progress = run.engine.progress().map(|f| f(label));
    let mut buf = vec![0u8; FILE_BUF];
    let mut done = 0u64;
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut reader, &mut buf)
            .await
            .map_err(io)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await.map_err(io)?;
        done += n as u64;
        if let Some(p) = &progress {
            p(done, size);
        }
    }
    out.flush().await.map_err(io)?;
    out.get_mut().sync_all().await.map_err(io)?;
    Ok(done)
}

/// The recorded data export the targets upload.
async fn data_file(run: &JobRun) -> Result<FileRecord, StepError> {
    let key = Command::ExportSource { skip_data: false }.step_key();
    export(run, false).await?;
    run.recorded::<FileRecord>(&key)
        .await?
        .ok_or_else(|| StepError::fatal("the plan promotes without an export"))
}

/// One target of the plan.
#[derive(Debug, Clone)]
struct TargetSpec {
    stream: String,
    mode: Mode,
    key: String,
    detail: String,
    /// Position of the target within its site (names its temporary copy).
    index: usize,
}

/// Runs every `PromoteTo` of the plan: sites concurrently, the streams of one site in order.
/// Returns an error only when a target must be retried (or the run was cancelled); a target
/// that failed for good is recorded as failed and the others go on.
pub(crate) async fn promote_all(run: &JobRun) -> Result<(), StepError> {
    let mut sites: Vec<(String, Vec<TargetSpec>)> = Vec::new();
    for c in &run.plan.commands {
        if let Command::PromoteTo {
            site,
            stream_name,
            mode,
        } = c
        {
            let pos = match sites
                .iter()
                .position(|(s, _)| site_key(s) == site_key(site))
            {
                Some(p) => p,
                None => {
                    sites.push((site.clone(), Vec::new()));
                    sites.len() - 1
                }
            };
            let list = &mut sites[pos].1;
            list.push(TargetSpec {
                stream: stream_name.clone(),
                mode: *mode,
                key: c.step_key(),
                detail: c.to_string(),
                index: list.len() + 1,
            });
        }
    }
    let mut unfinished = false;
    for (_, targets) in &sites {
        for t in targets {
            if run.recorded::<TargetRecord>(&t.key).await?.is_none() {
                unfinished = true;
            }
        }
    }
    let file = if unfinished {
        Some(data_file(run).await?)
    } else {
        None
    };
    let results = join_all(
        sites
            .iter()
            .map(|(site, targets)| promote_site(run, site, targets, file.as_ref())),
    )
    .await;
    let mut retry: Option<StepError> = None;
    for r in results {
        match r {
            Ok(()) => {}
            Err(StepError::Cancelled) => return Err(StepError::Cancelled),
            Err(e @ StepError::Retry { .. }) => {
                // Keep the longest pause a server asked for.
                let later = match (&retry, &e) {
                    (
                        Some(StepError::Retry {
                            retry_after: Some(a),
                            ..
                        }),
                        StepError::Retry {
                            retry_after: Some(b),
                            ..
                        },
                    ) => b > a,
                    (None, _) => true,
                    (
                        Some(StepError::Retry {
                            retry_after: None, ..
                        }),
                        StepError::Retry {
                            retry_after: Some(_),
                            ..
                        },
                    ) => true,
                    _ => false,
                };
                if later {
                    retry = Some(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    match retry {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The targets of one site, in order; then the site's temporary apps are removed.
async fn promote_site(
    run: &JobRun,
    site: &str,
    targets: &[TargetSpec],
    file: Option<&FileRecord>,
) -> Result<(), StepError> {
    let client = run.engine.sites().remote(site).cloned();
    for t in targets {
        let work = async {
            let Some(client) = &client else {
                return Err(StepError::fatal(format!(
                    "site \"{site}\" is not configured (any more); add it as a [[remote]] or change PromoteToServer"
                )));
            };
            let Some(file) = file else {
                return Err(StepError::fatal("no export to promote"));
            };
            promote_target(run, client, site, t, file).await
        };
        match run.step(&t.key, &t.detail, work).await {
            Ok(_) => {}
            Err(StepError::Fatal(message)) => {
                let rec = TargetRecord {
                    site: site.to_string(),
                    stream: t.stream.clone(),
                    mode: t.mode,
                    action: "failed".into(),
                    stream_id: None,
                    app_id: None,
                    hub_link: None,
                    error: Some(message),
                };
                let json = serde_json::to_value(&rec)
                    .map_err(|e| StepError::fatal(format!("cannot encode the result: {e}")))?;
                run.store()
                    .step_finish(run.id(), &run.lease, &t.key, "failed", &json)
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(client) = &client {
        remove_site_temporaries(run, client, site).await?;
    }
    Ok(())
}

/// Promotes the export into one stream of one site.
async fn promote_target(
    run: &JobRun,
    client: &QrsClient,
    site: &str,
    t: &TargetSpec,
    file: &FileRecord,
) -> Result<TargetRecord, StepError> {
    let stream = resolve_stream(client, site, &t.stream).await?;
    let skey = stream_key(&t.stream);
    // An app made for this target by an earlier run of this job: finish it.
    let made = run
        .state()
        .await
        .sites
        .get(&site_key(site))
        .and_then(|s| s.new_apps.get(&skey).cloned());
    if let Some(app_id) = made {
        match client.find_app(&app_id).await? {
            Some(app) => return publish_new(run, client, site, t, &stream, app).await,
            None => {
                run.update_state(|s| {
                    s.sites
                        .entry(site_key(site))
                        .or_default()
                        .new_apps
                        .remove(&skey);
                })
                .await?;
            }
        }
    }
    let target = match t.mode {
        Mode::Overwrite => find_target(run, client, site, &stream).await?,
        Mode::Duplicate => None,
    };
    match target {
        Some(target_id) => {
            let temp = ensure_temp(run, client, site, file).await?;
            client.replace_app(&temp, &target_id).await?;
            fault::point(&format!("replaced:{}", site_key(site)));
            finish_target(run, client, site, t, &stream, &target_id, "replaced").await
        }
        None => {
            let temp = ensure_temp(run, client, site, file).await?;
            let name = temp_name(run.id(), site, t.index);
            let sk = site_key(site);
            let skey2 = skey.clone();
            let copy_id = create_tracked(
                run,
                client,
                site,
                &name,
                async {
                    let id = client.copy_app(&temp, Some(&name)).await?.id;
                    fault::point(&format!("copied:{}", site_key(site)));
                    Ok(id)
                },
                move |s: &mut JobState, id: &str| {
                    s.sites
                        .entry(sk)
                        .or_default()
                        .new_apps
                        .insert(skey2, id.to_string());
                },
            )
            .await?;
            let app = client.get_app(&copy_id).await?;
            publish_new(run, client, site, t, &stream, app).await
        }
    }
}

/// Publishes a new app made for a target (unless an earlier run already did) under the
/// source app's name, then finishes the target.
async fn publish_new(
    run: &JobRun,
    client: &QrsClient,
    site: &str,
    t: &TargetSpec,
    stream: &Stream,
    app: App,
) -> Result<TargetRecord, StepError> {
    if !app.published {
        client
            .publish_app(&app.id, &stream.id, Some(&run.plan.app_name))
            .await?;
        fault::point(&format!("published:{}", site_key(site)));
    } else if app.name != run.plan.app_name {
        let name = run.plan.app_name.clone();
        client
            .update_app(&app.id, move |v| {
                if let Some(o) = v.as_object_mut() {
                    o.insert("name".into(), serde_json::Value::String(name.clone()));
                }
            })
            .await?;
    }
    finish_target(run, client, site, t, stream, &app.id, "published").await
}

/// Writes the target's description, records the mapping, and builds the record.
async fn finish_target(
    run: &JobRun,
    client: &QrsClient,
    site: &str,
    t: &TargetSpec,
    stream: &Stream,
    app_id: &str,
    action: &str,
) -> Result<TargetRecord, StepError> {
    let text = description(run).await?;
    client.set_app_description(app_id, &text).await?;
    run.store()
        .mapping_put(&run.plan.app_id, &site_key(site), &stream.id, app_id)
        .await?;
    let hub_link = run.settings().remote(site).map(|s| s.app_url(app_id));
    Ok(TargetRecord {
        site: site.to_string(),
        stream: t.stream.clone(),
        mode: t.mode,
        action: action.into(),
        stream_id: Some(stream.id.clone()),
        app_id: Some(app_id.to_string()),
        hub_link,
        error: None,
    })
}

/// The description of every target app: where it came from, who approved it and when, the
/// original owner and the version id.
async fn description(run: &JobRun) -> Result<String, StepError> {
    let local = &run.settings().local;
    if let Some(r) = &run.restore {
        return Ok(format!(
            "App restored by Promoter from version {} of app '{}' ({}) of site '{}' at {} (job {}).",
            r.version_id,
            run.plan.app_name,
            r.app_id,
            local.alias,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            run.id()
        ));
    }
    let version = run.version_id().await?;
    let mut text = run.plan.target_description(&local.host, version.as_deref());
    text.push_str(&format!(
        "\nSource: site '{}', app {} (job {}).",
        local.alias,
        run.plan.app_id,
        run.id()
    ));
    Ok(text)
}

/// The one stream with this name on the site.
async fn resolve_stream(client: &QrsClient, site: &str, name: &str) -> Result<Stream, StepError> {
    let found: Vec<Stream> = client
        .streams_named(name)
        .await?
        .into_iter()
        .filter(|s| s.name.trim().eq_ignore_ascii_case(name.trim()))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => Err(StepError::fatal(format!(
            "stream \"{name}\" does not exist on site \"{site}\"; create it or correct PromoteToStream"
        ))),
        n => Err(StepError::fatal(format!(
            "{n} streams are named \"{name}\" on site \"{site}\"; rename all but one"
        ))),
    }
}

/// The app to overwrite in `stream`: the one this source app was promoted to before (if it
/// still exists there), else the one published app with the same name. Several with that name:
/// the target fails rather than replacing them all.
async fn find_target(
    run: &JobRun,
    client: &QrsClient,
    site: &str,
    stream: &Stream,
) -> Result<Option<String>, StepError> {
    let source = &run.plan.app_id;
    if let Some(id) = run
        .store()
        .mapping_get(source, &site_key(site), &stream.id)
        .await?
    {
        match client.find_app(&id).await? {
            Some(app)
                if app.published
                    && app
                        .stream
                        .as_ref()
                        .is_some_and(|s| s.id.eq_ignore_ascii_case(&stream.id)) =>
            {
                return Ok(Some(id));
            }
            _ => tracing::info!(
                job = %run.id(),
                site,
                stream = %stream.name,
                "the app {id} this app was promoted to before is gone or moved; looking for it by name"
            ),
        }
    }
    let name = &run.plan.app_name;
    let candidates: Vec<App> = client
        .apps(Some(&Filter::eq("name", name)))
        .await?
        .into_iter()
        .filter(|a| {
            a.published
                && a.name.eq_ignore_ascii_case(name)
                && a.stream
                    .as_ref()
                    .is_some_and(|s| s.id.eq_ignore_ascii_case(&stream.id))
        })
        .collect();
    match candidates.len() {
        0 => Ok(None),
        1 => Ok(candidates.into_iter().next().map(|a| a.id)),
        n => Err(StepError::fatal(format!(
            "{n} published apps are named \"{name}\" in stream \"{}\" on site \"{site}\" ({}); none was replaced. Keep one (delete or rename the others) and promote again",
            stream.name,
            candidates
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The job's upload on this site (uploading it first if needed), streamed from the export file
/// while holding one of the site's transfer slots.
async fn ensure_temp(
    run: &JobRun,
    client: &QrsClient,
    site: &str,
    file: &FileRecord,
) -> Result<String, StepError> {
    let sk = site_key(site);
    let existing = run
        .state()
        .await
        .sites
        .get(&sk)
        .and_then(|s| s.temp_id.clone());
    if let Some(id) = existing {
        if client.find_app(&id).await?.is_some() {
            return Ok(id);
        }
        run.update_state(|s| {
            s.sites.entry(sk.clone()).or_default().temp_id = None;
        })
        .await?;
    }
    let name = temp_name(run.id(), site, 0);
    let path = file.path.clone();
    let upload = async {
        let permit = run
            .engine
            .site_limit(site)
            .acquire_owned()
            .await
            .map_err(|_| StepError::Cancelled)?;
        let progress = fault::mid_transfer(
            &format!("mid-upload:{}", site_key(site)),
            run.engine.progress().map(|f| f(&format!("upload {site}"))),
        );
        let app = client.upload_app_from_file(&name, &path, progress).await?;
        drop(permit);
        fault::point(&format!("uploaded:{}", site_key(site)));
        Ok(app.id)
    };
    create_tracked(
        run,
        client,
        site,
        &name,
        upload,
        move |s: &mut JobState, id: &str| {
            s.sites.entry(sk).or_default().temp_id = Some(id.to_string());
        },
    )
    .await
}

/// Creates an app with a unique temporary `name` so that a crash between its creation and the
/// recording of its id cannot leave a second one: the name is recorded first; a run that finds
/// the name recorded looks for the app by name and reuses it (deleting any extra).
async fn create_tracked<F>(
    run: &JobRun,
    client: &QrsClient,
    site: &str,
    name: &str,
    create: F,
    record: impl FnOnce(&mut JobState, &str),
) -> Result<String, StepError>
where
    F: std::future::Future<Output = Result<String, StepError>>,
{
    let sk = site_key(site);
    let pending = run
        .state()
        .await
        .sites
        .get(&sk)
        .is_some_and(|s| s.creating.contains(name));
    let mut id = None;
    if pending {
        let mut found = apps_named(client, name).await?;
        if !found.is_empty() {
            let keep = found.remove(0);
            for extra in found {
                delete_quietly(client, &extra.id).await?;
            }
            tracing::info!(job = %run.id(), site, app = %keep.id, "reusing {name}, created before an interruption");
            id = Some(keep.id);
        }
    } else {
        run.update_state(|s| {
            s.sites
                .entry(sk.clone())
                .or_default()
                .creating
                .insert(name.to_string());
        })
        .await?;
    }
    let id = match id {
        Some(id) => id,
        None => create.await?,
    };
    run.update_state(|s| {
        record(s, &id);
        s.sites.entry(sk).or_default().creating.remove(name);
    })
    .await?;
    Ok(id)
}

/// Apps with exactly this name.
async fn apps_named(client: &QrsClient, name: &str) -> Result<Vec<App>, StepError> {
    Ok(client
        .apps(Some(&Filter::eq("name", name)))
        .await?
        .into_iter()
        .filter(|a| a.name == name)
        .collect())
}

/// Deletes an app; one that is already gone is fine.
async fn delete_quietly(client: &QrsClient, id: &str) -> Result<(), StepError> {
    match client.delete_app(id).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the site's upload, any app left half-created, and copies that were never published.
async fn remove_site_temporaries(
    run: &JobRun,
    client: &QrsClient,
    site: &str,
) -> Result<(), StepError> {
    let sk = site_key(site);
    let Some(work) = run.state().await.sites.get(&sk).cloned() else {
        return Ok(());
    };
    if let Some(id) = &work.temp_id {
        delete_quietly(client, id).await?;
        run.update_state(|s| {
            s.sites.entry(sk.clone()).or_default().temp_id = None;
        })
        .await?;
    }
    for name in &work.creating {
        for app in apps_named(client, name).await? {
            delete_quietly(client, &app.id).await?;
        }
        run.update_state(|s| {
            s.sites.entry(sk.clone()).or_default().creating.remove(name);
        })
        .await?;
    }
    for (stream, id) in &work.new_apps {
        if let Some(app) = client.find_app(id).await?
            && !app.published
        {
            delete_quietly(client, id).await?;
        }
        run.update_state(|s| {
            s.sites
                .entry(sk.clone())
                .or_default()
                .new_apps
                .remove(stream);
        })
        .await?;
    }
    Ok(())
}

/// `CleanUp`: removes the job's temporary files.
pub(crate) async fn clean_up(run: &JobRun) -> Result<(), StepError> {
    let cmd = Command::CleanUp;
    run.step(&cmd.step_key(), &cmd.to_string(), async {
        let n = remove_files(run).await?;
        Ok(Done::ok(format!("removed {n} temporary file(s)")))
    })
    .await?;
    Ok(())
}

async fn remove_files(run: &JobRun) -> Result<usize, StepError> {
    let files = run.state().await.files;
    let mut n = 0;
    for f in &files {
        match tokio::fs::remove_file(f).await {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(job = %run.id(), "cannot remove {}: {e}", f.display()),
        }
    }
    run.update_state(|s| s.files.clear()).await?;
    Ok(n)
}

/// After a job failed for good: remove its files, every temporary app it left on the target
/// sites, and an unpublish copy made while the source app is still there (the source stays as
/// it was). Best effort; failures are logged.
pub(crate) async fn discard_temporaries(run: &JobRun) {
    if let Err(e) = remove_files(run).await {
        tracing::warn!(job = %run.id(), "cannot remove the job's files: {}", e.message());
    }
    if let Err(e) = super::source::discard_copy(run).await {
        tracing::warn!(job = %run.id(), "cannot remove the unpublish copy: {}", e.message());
    }
    let sites: Vec<String> = run.state().await.sites.keys().cloned().collect();
    for site in sites {
        if let Some(client) = run.engine.sites().remote(&site).cloned()
            && let Err(e) = remove_site_temporaries(run, &client, &site).await
        {
            tracing::warn!(job = %run.id(), site, "cannot remove temporary apps: {}", e.message());
        }
    }
}
