use super::*;

/// A config folder with certificate files for the sites named.
fn folder(aliases: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for a in aliases {
        let c = dir.path().join("certificates").join(a);
        std::fs::create_dir_all(&c).unwrap();
        for f in ["client.pem", "client_key.pem", "root.pem"] {
            std::fs::write(c.join(f), "x").unwrap();
        }
    }
    dir
}

const GOOD: &str = r#"
[local]
alias = "dev"
host = "qlik-dev"
certificates = "certificates/dev"

[[remote]]
alias = "Test - EU"
host = "qlik-test"
certificates = "certificates/test"
"#;

fn load(dir: &tempfile::TempDir, text: &str) -> Result<Settings, ConfigError> {
    let path = dir.path().join("promoter.toml");
    std::fs::write(&path, text).unwrap();
    Settings::load_with_env(&path, false)
}

#[test]
fn minimal_config_gets_documented_defaults_and_absolute_paths() {
    let dir = folder(&["dev", "test"]);
    let s = load(&dir, GOOD).unwrap();
    assert_eq!(s.local.port, 4242);
    assert_eq!(s.local.user, "INTERNAL\\sa_api");
    assert!(s.local.verify_tls);
    assert_eq!(s.properties.approval, "PromotionApproval");
    assert_eq!(s.subscriptions.interval_seconds, 60);
    assert_eq!(s.listener.bind, "127.0.0.1:8585");
    assert!(s.local.certificates.is_absolute());
    assert!(s.local.certificates.starts_with(dir.path()));
    assert!(s.data.dir.starts_with(dir.path()));
    assert!(s.data.database_url().starts_with("sqlite://"));
    assert!(
        s.remote("test - eu").is_some(),
        "aliases match without case"
    );
    assert!(s.warnings().is_empty());
}

#[test]
fn problems_name_the_key_and_the_fix() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key",
            "[listener]\nbnd = \"x\"\n",
            "unknown key `bnd`",
        ),
        (
            "wrong type",
            "[listener]\nmax_body_bytes = \"lots\"\n",
            "listener.max_body_bytes",
        ),
        (
            "duplicate alias",
            "[[remote]]\nalias = \"DEV\"\nhost = \"h\"\ncertificates = \"certificates/dev\"\n",
            "is used by another site",
        ),
        (
            "missing certificate",
            "[[remote]]\nalias = \"prod\"\nhost = \"h\"\ncertificates = \"certificates/prod\"\n",
            "`remote \"prod\".certificates`: ",
        ),
        (
            "remote without alias",
            "[[remote]]\nalias = \" \"\nhost = \"h\"\ncertificates = \"certificates/test\"\n",
            "`remote #2.alias`: is empty",
        ),
        (
            "bad user",
            "[[remote]]\nalias = \"p2\"\nhost = \"h\"\ncertificates = \"certificates/test\"\nuser = \"sa_api\"\n",
            "DIRECTORY\\userid",
        ),
        (
            "tls half set",
            "[listener]\ntls_cert = \"certificates/dev/client.pem\"\n",
            "go together",
        ),
        (
            "approve and deny overlap",
            "[promotion]\napprove_values = [\"Yes\"]\ndeny_values = [\"yes\"]\n",
            "both an approve and a deny value",
        ),
        (
            "secret from unset env",
            "[email.smtp]\nusername = \"u\"\npassword = { env = \"PROMOTER_TEST_NOPE_UNSET\" }\n",
            "PROMOTER_TEST_NOPE_UNSET is not set",
        ),
        (
            "bad database url",
            "[data]\ndatabase_url = \"mysql://x\"\n",
            "data.database_url",
        ),
    ];
    for (name, extra, expected) in cases {
        let dir = folder(&["dev", "test"]);
        let err = load(&dir, &format!("{GOOD}\n{extra}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "case {name}: expected {expected:?} in:\n{err}"
        );
        assert!(
            err.contains("promoter.toml"),
            "case {name}: the file is named in:\n{err}"
        );
    }
}

#[test]
fn missing_file_says_how_to_start() {
    let err = Settings::load_with_env(Path::new("/nonexistent/promoter.toml"), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/promoter.toml"));
    assert!(err.contains("promoter.example.toml"));
}

#[test]
fn turning_verification_off_is_loud() {
    let dir = folder(&["dev", "test"]);
    let s = load(
        &dir,
        &GOOD.replace(
            "host = \"qlik-test\"",
            "host = \"qlik-test\"\nverify_tls = false",
        ),
    )
    .unwrap();
    let w = s.warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("Test - EU") && w[0].contains("OFF"));
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let dir = folder(&["dev", "test"]);
    std::fs::write(dir.path().join("pw"), "topsecretpw\n").unwrap();
    let s = load(
        &dir,
        &format!(
            "{GOOD}\n[email.smtp]\nusername = \"u\"\npassword = {{ file = \"pw\" }}\n[data]\ndatabase_url = \"postgres://u:dbpassword@localhost/x\"\n"
        ),
    )
    .unwrap();
    assert_eq!(
        s.email.smtp.password_value.as_ref().unwrap().expose(),
        "topsecretpw"
    );
    assert!(s.data.is_postgres());
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("topsecretpw"));
    assert!(!dbg.contains("dbpassword"));
}

#[test]
fn shipped_example_config_is_valid() {
    // The documented example must parse with every key it shows.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/promoter.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let dir = folder(&["dev", "test", "prod"]);
    let text = text.replace(
        "certificates/",
        &format!("{}/certificates/", dir.path().display()),
    );
    let s = load(&dir, &text).unwrap();
    assert!(!s.remotes.is_empty());
}
