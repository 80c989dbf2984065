//! Sign-ins in a real headless Chromium running on a lab host, as the user of that laptop
//! would sign in: `tests/idp/browser-login.mjs` (npm `puppeteer-core` steering Debian's
//! `chromium`) opens the login URL `ztmesh up` printed, follows the SSO link, fills the IdP's
//! form (password and the current one-time code) and reports the page it lands on.

use crate::idp::{idp_dir, which};
use crate::totp::totp_now;
use crate::{BrowseOutcome, IdpUser, Lab, LabError};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The Chromium binary: `ZTMESH_CHROMIUM`, or `chromium` / `chromium-browser` on `PATH`.
pub fn chromium() -> Result<PathBuf, LabError> {
    if let Some(path) = std::env::var_os("ZTMESH_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    which("chromium")
        .or_else(|_| which("chromium-browser"))
        .map_err(|_| {
            LabError::Setup(
                "the lab signs users in with a real browser: install Debian's `chromium` \
             (packaging/demo.sh and .ci/run do) or set ZTMESH_CHROMIUM"
                    .into(),
            )
        })
}

/// The page the browser landed on (a refusal page too: the caller judges what it says).
#[derive(Debug, Deserialize)]
struct Page {
    url: String,
    text: String,
}

/// What the script prints: the page reached, or why it could not get there.
#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(rename = "final")]
    landed: Option<Page>,
    error: Option<String>,
}

impl Lab {
    /// Signs `user` in through the login URL in a headless Chromium on host `from`; with `sso`
    /// it first takes the page's "sign in with SSO" link, as a user of the IdP would.
    pub fn browser_login(
        &self,
        from: &str,
        url: &str,
        user: &IdpUser,
        sso: bool,
    ) -> Result<BrowseOutcome, LabError> {
        let script = idp_dir()?.join("browser-login.mjs");
        if !idp_dir()?.join("node_modules/puppeteer-core").is_dir() {
            return Err(LabError::Setup(
                "npm puppeteer-core is not installed: run `npm ci` in tests/idp \
                 (packaging/test.sh does)"
                    .into(),
            ));
        }
        let (node, browser) = (which("node")?, chromium()?);
        let otp = user
            .totp_secret
            .as_deref()
            .map(totp_now)
            .unwrap_or_default();
        let fields = [
            format!("login={}", user.login),
            format!("password={}", user.password),
            format!("otp={otp}"),
        ];
        let (script, browser) = (script.to_string_lossy(), browser.to_string_lossy());
        let mut args = vec![
            script.as_ref(),
            "--chromium",
            browser.as_ref(),
            "--url",
            url,
            "--timeout-secs",
            "60",
        ];
        if sso {
            args.extend(["--follow-link", "/oidc/start/"]);
        }
        for f in &fields {
            args.extend(["--field", f.as_str()]);
        }
        let out = self.exec(from, &node, &args, Duration::from_secs(120))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let reply: Reply = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| {
                LabError::Setup(format!(
                    "browser-login.mjs printed no result: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            })?;
        Ok(match (reply.error, reply.landed) {
            (Some(message), _) => BrowseOutcome::Error { message },
            (None, Some(p)) => BrowseOutcome::Ok {
                final_url: p.url,
                page: p.text,
            },
            (None, None) => BrowseOutcome::Error {
                message: format!("browser-login.mjs printed neither a page nor an error: {text}"),
            },
        })
    }
}
