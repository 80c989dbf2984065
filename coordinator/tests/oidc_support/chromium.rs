//! A real headless Chromium driving a login page as a user would: `tests/idp/browser-login.mjs`
//! (npm `puppeteer-core`) opens the page, types into its form, submits it and reports the page
//! the browser lands on.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ensure_node_modules, idp_dir};

/// The login form as the browser showed it.
#[derive(Debug, Deserialize)]
pub struct FormSeen {
    pub url: String,
    pub status: u16,
    pub title: String,
    /// The visible label of each field the browser filled in, by field name.
    pub labels: std::collections::HashMap<String, String>,
}

/// The page the browser ended on after submitting the form.
#[derive(Debug, Deserialize)]
pub struct PageSeen {
    pub url: String,
    pub status: u16,
    pub title: String,
    /// The text a user sees (`innerText` of the body).
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct Submitted {
    pub form: FormSeen,
    #[serde(rename = "final")]
    pub landed: PageSeen,
}

/// The Chromium binary: `ZTMESH_CHROMIUM`, or `chromium` / `chromium-browser` on `PATH`.
/// Panics when there is none: the browser tests are part of the suite, never skipped.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("ZTMESH_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ZTMESH_CHROMIUM={} is not a file: point it at a Chromium binary",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the browser tests need Chromium: install Debian's `chromium` \
                 (apt-get install chromium; .ci/run does) or set ZTMESH_CHROMIUM to its path"
            )
        })
}

/// Opens `url` in a fresh headless Chromium profile, types `fields` (name, value) into the
/// form found there (after any redirects), clicks its submit button and returns what the
/// browser showed. Panics with the script's reason when the browser cannot get that far.
pub async fn submit_form(url: &str, fields: &[(&str, &str)]) -> Submitted {
    ensure_node_modules();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(idp_dir().join("browser-login.mjs"))
        .arg("--chromium")
        .arg(chromium())
        .args(["--url", url, "--timeout-secs", "60"]);
    for (name, value) in fields {
        cmd.arg("--field").arg(format!("{name}={value}"));
    }
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("browser-login.mjs on {url}: no answer within 120 s"))
        .expect("cannot run `node` (Node.js >= 20.19 is needed for the browser tests)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = || {
        format!(
            "browser-login.mjs on {url} ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(out.status.success(), "{}", report());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", report()))
}
