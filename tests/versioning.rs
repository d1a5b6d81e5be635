//! App versions on a real S3-compatible server with bucket versioning (moto in server mode,
//! `tests/support/s3_server.py`, one process per test binary) and on the folder backend.
//!
//! Needs `python3 -m pip install 'moto[server]==5.1.*'` (done by `.ci/test`).

use std::path::Path;
use std::process::Command;
use std::sync::{LazyLock, Mutex};

#[path = "support/servers.rs"]
mod servers;
use servers::{PyServer, settings_with, spawn_py};

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use promoter::config::{Secret, Settings};
use promoter::engine::hooks::VersionMeta;
use promoter::versioning::{MIN_PART_SIZE, VersionError, VersionStore, sha256_of};
use sha2::{Digest, Sha256};

const APP: &str = "0b5e9c1d-1111-2222-3333-444455556666";

/// The moto server, shared by the tests of this binary. It exits when its stdin closes, which
/// happens when the test process ends.
static MOTO: LazyLock<Mutex<PyServer>> = LazyLock::new(|| {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/s3_server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    Mutex::new(spawn_py(
        cmd,
        "is moto installed? python3 -m pip install 'moto[server]==5.1.*'",
    ))
});

fn moto_port() -> u16 {
    MOTO.lock().unwrap().port
}

fn settings(toml_versioning: &str) -> Settings {
    settings_with(toml_versioning)
}

fn s3_settings(bucket: &str) -> Settings {
    let mut s = settings(&format!(
        r#"
[versioning]
enabled = true
backend = "s3"

[versioning.s3]
bucket = "{bucket}"
prefix = "promoter/test"
region = "eu-central-1"
endpoint = "http://127.0.0.1:{port}"
path_style = true
"#,
        port = moto_port()
    ));
    s.versioning.s3.credentials = Some((Secret::new("testing"), Secret::new("testing")));
    s
}

/// A plain S3 client for arranging and inspecting the bucket behind the store's back.
async fn raw_client() -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("eu-central-1"))
        .endpoint_url(format!("http://127.0.0.1:{}", moto_port()))
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn make_bucket(versioned: bool) -> String {
    let bucket = format!("promoter-{}", uuid::Uuid::new_v4().simple());
    let c = raw_client().await;
    c.create_bucket()
        .bucket(&bucket)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuCentral1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    if versioned {
        c.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    bucket
}

fn meta(job: &str) -> VersionMeta {
    VersionMeta {
        app_id: APP.into(),
        app_name: "Verkäufe – 販売 <Q1>".into(),
        site: "dev".into(),
        stream: Some("Überblick".into()),
        job_id: job.into(),
        approver: Some("CORP\\jürgen".into()),
        time: "2024-05-01T10:00:00Z".into(),
    }
}

/// Deterministic pseudo-random bytes (incompressible, different per seed).
fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn read_back(store: &VersionStore, version_id: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut r = store.open(APP, version_id).await.unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn s3_keeps_two_versions_of_one_app_and_reads_each_back() {
    let bucket = make_bucket(true).await;
    let store = VersionStore::from_settings(&s3_settings(&bucket))
        .await
        .unwrap()
        .unwrap();
    assert!(store.check().await.unwrap().contains(&bucket));

    let one = body(1, 300_000);
    let two = body(2, 120_000);
    let v1 = store
        .put(&meta("job-1"), &one[..], Some(one.len() as u64))
        .await
        .unwrap();
    let v2 = store.put(&meta("job-2"), &two[..], None).await.unwrap();
    assert_ne!(v1.version_id, v2.version_id);
    assert_eq!(v1.key, format!("promoter/test/apps/{APP}/app.qvf"));
    assert_eq!(v2.key, v1.key);
    assert_eq!((v1.size, v1.sha256.clone()), (one.len() as u64, sha(&one)));
    assert_eq!((v2.size, v2.sha256.clone()), (two.len() as u64, sha(&two)));

    // The bucket really holds two object versions under the id-derived key.
    let listed = raw_client()
        .await
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let mut ids: Vec<&str> = listed
        .versions()
        .iter()
        .filter_map(|v| v.version_id())
        .collect();
    ids.sort();
    let mut expected = vec![v1.version_id.as_str(), v2.version_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(
        listed
            .versions()
            .iter()
            .all(|v| v.key() == Some(v1.key.as_str()))
    );

    let list = store.list(APP).await.unwrap();
    assert_eq!(list.len(), 2);
    let found = |id: &str| list.iter().find(|v| v.version_id == id).unwrap().clone();
    let l1 = found(&v1.version_id);
    assert_eq!(
        l1.meta,
        meta("job-1"),
        "metadata round trip (UTF-8 through x-amz-meta-*)"
    );
    assert_eq!(l1.sha256, sha(&one));
    assert_eq!(l1.size, one.len() as u64);
    assert_eq!(found(&v2.version_id).meta.job_id, "job-2");

    assert_eq!(read_back(&store, &v1.version_id).await, one);
    let reader = store.open(APP, &v2.version_id).await.unwrap();
    assert_eq!(
        sha256_of(reader).await.unwrap(),
        (sha(&two), two.len() as u64)
    );

    // Unknown versions and apps.
    let err = store.open(APP, "no-such-version").await.err().unwrap();
    assert!(matches!(err, VersionError::NotFound { .. }), "{err}");
    assert!(
        store
            .list("ffffffff-0000-0000-0000-000000000000")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.list("../x").await.unwrap_err(),
        VersionError::InvalidAppId(_)
    ));
}

#[tokio::test]
async fn s3_large_bodies_go_up_as_multipart_uploads() {
    let bucket = make_bucket(true).await;
    let store = VersionStore::new(&s3_settings(&bucket))
        .await
        .unwrap()
        .with_part_size(MIN_PART_SIZE);
    let big = body(3, 2 * MIN_PART_SIZE + 12_345);
    let v = store
        .put(&meta("job-big"), &big[..], Some(big.len() as u64))
        .await
        .unwrap();
    assert_eq!(v.sha256, sha(&big));
    assert_eq!(v.size, big.len() as u64);

    // S3 marks multipart objects with an ETag ending in "-<parts>".
    let head = raw_client()
        .await
        .head_object()
        .bucket(&bucket)
        .key(&v.key)
        .version_id(&v.version_id)
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().trim_matches('"').ends_with("-3"),
        "{:?}",
        head.e_tag()
    );

    // The SHA-256, known only at the end, is found again through the version's tag.
    let listed = store.list(APP).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256, sha(&big));
    assert_eq!(listed[0].meta, meta("job-big"));
    let reader = store.open(APP, &v.version_id).await.unwrap();
    assert_eq!(sha256_of(reader).await.unwrap().0, sha(&big));
}

#[tokio::test]
async fn s3_a_retried_job_stores_no_second_version() {
    let bucket = make_bucket(true).await;
    let store = VersionStore::new(&s3_settings(&bucket)).await.unwrap();
    let data = body(4, 50_000);
    let first = store.put(&meta("job-r"), &data[..], None).await.unwrap();
    let again = store.put(&meta("job-r"), &data[..], None).await.unwrap();
    assert_eq!(again.version_id, first.version_id);
    assert_eq!(again.sha256, first.sha256);
    assert_eq!(store.list(APP).await.unwrap().len(), 1);
}

#[tokio::test]
async fn s3_an_unversioned_bucket_is_refused_before_anything_is_overwritten() {
    let bucket = make_bucket(false).await;
    let store = VersionStore::new(&s3_settings(&bucket)).await.unwrap();
    let err = store
        .put(&meta("job-u"), &b"x"[..], None)
        .await
        .unwrap_err();
    assert!(matches!(err, VersionError::NotVersioned { .. }), "{err}");
    assert!(err.to_string().contains("put-bucket-versioning"), "{err}");
    assert!(!err.is_retryable());
    let listed = raw_client()
        .await
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0));

    let missing = VersionStore::new(&s3_settings("promoter-no-such-bucket"))
        .await
        .unwrap();
    let err = missing.check().await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn folder_backend_keeps_versions_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings("[versioning]\nenabled = true\n");
    s.versioning.folder = dir.path().join("versions");
    let store = VersionStore::from_settings(&s).await.unwrap().unwrap();
    store.check().await.unwrap();

    let one = body(5, 2_000_000);
    let two = body(6, 10);
    let v1 = store.put(&meta("job-1"), &one[..], None).await.unwrap();
    let v2 = store.put(&meta("job-2"), &two[..], None).await.unwrap();
    assert_ne!(v1.version_id, v2.version_id);
    assert!(
        dir.path()
            .join("versions")
            .join(APP)
            .join(format!("{}.qvf", v1.version_id))
            .is_file()
    );
    assert!(
        dir.path()
            .join("versions")
            .join(APP)
            .join(format!("{}.json", v1.version_id))
            .is_file()
    );

    let list = store.list(APP).await.unwrap();
    assert_eq!(
        list.iter()
            .map(|v| v.version_id.as_str())
            .collect::<Vec<_>>(),
        [v2.version_id.as_str(), v1.version_id.as_str()],
        "newest first"
    );
    assert_eq!(list[1].meta, meta("job-1"));
    assert_eq!(list[1].sha256, sha(&one));
    assert_eq!(read_back(&store, &v1.version_id).await, one);
    assert_eq!(read_back(&store, &v2.version_id).await, two);

    // A retry of job-2 finds its version; nothing new is written.
    let again = store.put(&meta("job-2"), &two[..], None).await.unwrap();
    assert_eq!(again.version_id, v2.version_id);
    assert_eq!(store.list(APP).await.unwrap().len(), 2);

    for bad in ["../../etc/passwd", ".hidden", "nope"] {
        let err = store.open(APP, bad).await.err().unwrap();
        assert!(matches!(err, VersionError::NotFound { .. }), "{bad}: {err}");
    }
    let mut m = meta("job-3");
    m.app_id = "../escape".into();
    assert!(matches!(
        store.put(&m, &b"x"[..], None).await.unwrap_err(),
        VersionError::InvalidAppId(_)
    ));
    assert!(!dir.path().join("escape").exists());

    promoter::versioning::cli_versions(&s, APP).await.unwrap();
}
