//! Shared by the tests that start a real server process from `tests/support/*.py` and that need a
//! minimal configuration without real sites.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use promoter::config::Settings;

/// A Python test server started as a child process. It prints `PORT <n>` on its first line and
/// exits when its stdin closes, so dropping this handle (or the test process dying) stops it.
pub struct PyServer {
    pub child: Child,
    pub stdin: ChildStdin,
    pub port: u16,
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `python3 <script> <args...>` and waits for its `PORT` line. `install_hint` says which
/// package is missing when it does not start.
pub fn spawn_py(mut cmd: Command, install_hint: &str) -> PyServer {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .unwrap_or_else(|| {
            panic!("the test server did not start ({install_hint}); it said {line:?}")
        })
        .parse()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    PyServer { child, stdin, port }
}

/// Settings with two placeholder sites (never contacted) plus `extra` TOML sections.
pub fn settings_with(extra: &str) -> Settings {
    let text = format!(
        r#"
[local]
alias = "dev"
host = "qlik-dev"
certificates = "/nonexistent"

[[remote]]
alias = "test"
host = "qlik-test"
certificates = "/nonexistent"

{extra}
"#
    );
    toml::from_str(&text).unwrap()
}
