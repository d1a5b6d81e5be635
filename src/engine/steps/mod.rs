//! The executor's steps, one function per [`Command`]:
//! - [`transfer`]: export once per job, store the version, promote to every target, clean up;
//! - [`source`]: what happens to the source app afterwards (unpublish, strip, tag, untag);
//! - [`effects`]: mail, versions and the audit trail (the hooks of `engine::hooks`).

pub(crate) mod effects;
pub(crate) mod source;
pub(crate) mod transfer;

use super::executor::{JobRun, StepError};
use super::model::Command;

/// Runs one command other than `PromoteTo` (which [`transfer::promote_all`] runs for all
/// targets at once).
pub(crate) async fn run_command(run: &JobRun, cmd: &Command) -> Result<(), StepError> {
    match cmd {
        Command::NotifyPublishReview
        | Command::NotifyApproved
        | Command::NotifyDenied
        | Command::NotifyResult => effects::notify(run, cmd).await,
        Command::ExportSource { skip_data } => transfer::export(run, *skip_data).await,
        Command::StoreVersion => effects::store_version(run).await,
        Command::PromoteTo { .. } => transfer::promote_all(run).await,
        Command::UnpublishSource => source::unpublish(run).await,
        Command::StripPromotionProperties { properties } => source::strip(run, properties).await,
        Command::TagForReload { tag } => source::tag(run, tag).await,
        Command::UntagForReload { tag } => source::untag(run, tag).await,
        Command::CleanUp => transfer::clean_up(run).await,
    }
}
