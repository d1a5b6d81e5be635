//! Secrets in configuration: inline, from a file, or from an environment variable.
//!
//! A secret's value never appears in `Debug` or `Display` output, so it cannot leak into logs,
//! errors or the audit trail by accident.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How a secret is written in the TOML file.
///
/// ```toml
/// password = "inline value"                 # allowed, but prefer one of the two below
/// password = { file = "secrets/smtp.txt" }  # first line of the file (relative to the config folder)
/// password = { env = "PROMOTER_SMTP_PASSWORD" }
/// ```
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SecretSource {
    Inline(String),
    File { file: PathBuf },
    Env { env: String },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::File { file } => write!(f, "File({})", file.display()),
            SecretSource::Env { env } => write!(f, "Env({env})"),
        }
    }
}

/// A resolved secret value. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's value, for handing to the component that needs it (SMTP login, S3 client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretSource {
    /// Reads the secret. `base` is the config file's folder, for relative file paths.
    /// The error text names where the secret was expected, never its value.
    pub fn resolve(&self, base: &Path) -> Result<Secret, String> {
        match self {
            SecretSource::Inline(v) => Ok(Secret(v.clone())),
            SecretSource::File { file } => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    base.join(file)
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
                let value = text.lines().next().unwrap_or("").trim_end().to_string();
                if value.is_empty() {
                    return Err(format!("the secret file {} is empty", path.display()));
                }
                Ok(Secret(value))
            }
            SecretSource::Env { env } => match std::env::var(env) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                Ok(_) => Err(format!("the environment variable {env} is empty")),
                Err(_) => Err(format!("the environment variable {env} is not set")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{s}"), "<redacted>");
        let src = SecretSource::Inline("hunter2".into());
        assert!(!format!("{src:?}").contains("hunter2"));
    }

    #[test]
    fn reads_first_line_of_a_file_relative_to_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw.txt"), "s3cret\nignored\n").unwrap();
        let src = SecretSource::File {
            file: "pw.txt".into(),
        };
        assert_eq!(src.resolve(dir.path()).unwrap().expose(), "s3cret");
    }

    #[test]
    fn missing_env_variable_is_named() {
        let src = SecretSource::Env {
            env: "PROMOTER_TEST_SURELY_UNSET_VARIABLE".into(),
        };
        let err = src.resolve(Path::new(".")).unwrap_err();
        assert!(err.contains("PROMOTER_TEST_SURELY_UNSET_VARIABLE"));
    }
}
