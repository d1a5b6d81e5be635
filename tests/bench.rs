//! `promoter bench --promote-sites`: a small app promoted through the engine to two simulated
//! sites; the benchmark fails unless the job succeeds and every copy matches the source.

use promoter::config::Settings;
use promoter::store::{JobStatus, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_promotion_to_two_sites_is_measured_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    promoter::bench::run(4, Some(dir.path()), 2).await.unwrap();
    // Every measured run went through the engine's store as a promote job and succeeded.
    let settings = Settings::load(&dir.path().join("sim").join("promoter.toml")).unwrap();
    let store = Store::open(&settings).await.unwrap();
    let jobs = store.jobs_list(None, 10).await.unwrap();
    assert_eq!(jobs.len(), 2, "one job per measured run");
    for job in &jobs {
        assert_eq!(job.kind, "promote");
        assert_eq!(job.status, JobStatus::Succeeded);
        let steps: Vec<String> = store
            .steps(&job.id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.step_key)
            .collect();
        assert!(steps.iter().any(|k| k == "promote:t1:Sales"), "{steps:?}");
        assert!(steps.iter().any(|k| k == "promote:t2:Sales"), "{steps:?}");
    }
}
