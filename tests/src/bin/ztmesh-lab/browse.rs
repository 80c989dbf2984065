//! A headless "browser" for logins in the lab: follows redirects (keeping cookies per host, as
//! a browser does), takes the SSO link when asked to, and fills the login form it meets (user,
//! password and the current TOTP code) until a page without a login form is reached.
//!
//! It accepts the coordinator's self-signed certificate: it only ever runs inside lab
//! namespaces against lab servers.

use reqwest::{Method, StatusCode, Url};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Hard limit on requests per login (redirects included): a loop fails instead of spinning.
const MAX_STEPS: usize = 40;

pub struct Login {
    pub url: String,
    pub user: String,
    pub password: String,
    pub totp_secret: Option<String>,
    pub sso: bool,
}

pub fn run(login: Login) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::emit(json!({"result":"error","message":e.to_string()})),
    };
    let v = match rt.block_on(browse(&login)) {
        Ok((url, body)) => json!({"result":"ok","final_url":url,"page":snippet(&body)}),
        Err(e) => json!({"result":"error","message":e}),
    };
    crate::emit(v);
}

async fn browse(login: &Login) -> Result<(String, String), String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let mut jar: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut url = Url::parse(&login.url).map_err(|e| format!("bad url: {e}"))?;
    let mut method = Method::GET;
    let mut form: Option<Vec<(String, String)>> = None;
    let mut forms_posted = 0;
    for _ in 0..MAX_STEPS {
        let host = url.host_str().unwrap_or_default().to_string();
        let mut req = client.request(method.clone(), url.clone());
        if let Some(c) = jar.get(&host).filter(|c| !c.is_empty()) {
            let header: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", header.join("; "));
        }
        if let Some(f) = form.take() {
            req = req.form(&f);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        for sc in resp.headers().get_all("set-cookie") {
            if let Some((k, v)) = sc
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .and_then(|kv| kv.split_once('='))
            {
                jar.entry(host.clone())
                    .or_default()
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or("redirect without location")?;
            url = url.join(loc).map_err(|e| e.to_string())?;
            method = Method::GET;
            continue;
        }
        let final_url = url.to_string();
        let body = resp.text().await.unwrap_or_default();
        if status != StatusCode::OK {
            return Err(format!("{final_url} answered {status}: {}", snippet(&body)));
        }
        if login.sso {
            if let Some(href) = find_link(&body, "/oidc/start/") {
                url = url.join(&href).map_err(|e| e.to_string())?;
                method = Method::GET;
                continue;
            }
        }
        if let Some(f) = find_login_form(&body) {
            if forms_posted >= 3 {
                return Err(format!("login form shown again: {}", snippet(&body)));
            }
            forms_posted += 1;
            url = url.join(&f.action).map_err(|e| e.to_string())?;
            method = Method::POST;
            form = Some(fill(&f.inputs, login));
            continue;
        }
        return Ok((final_url, body));
    }
    Err(format!("no result after {MAX_STEPS} requests"))
}

struct Form {
    action: String,
    /// (name, type, value)
    inputs: Vec<(String, String, String)>,
}

/// The first form with a password field.
fn find_login_form(html: &str) -> Option<Form> {
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<form").map(|i| i + at) {
        let end = lower[start..].find("</form>").map(|i| i + start)?;
        let tag_end = lower[start..].find('>').map(|i| i + start)?;
        let action = attr(&html[start..tag_end], "action").unwrap_or_default();
        let mut inputs = Vec::new();
        let mut i = start;
        while let Some(s) = lower[i..end].find("<input").map(|x| x + i) {
            let e = lower[s..].find('>').map(|x| x + s)?;
            let tag = &html[s..e];
            if let Some(name) = attr(tag, "name") {
                inputs.push((
                    name,
                    attr(tag, "type")
                        .unwrap_or_else(|| "text".into())
                        .to_ascii_lowercase(),
                    attr(tag, "value").unwrap_or_default(),
                ));
            }
            i = e;
        }
        if inputs.iter().any(|(_, t, _)| t == "password") {
            return Some(Form { action, inputs });
        }
        at = end;
    }
    None
}

/// Fills a login form by field name: user/login, password, otp/totp/code; hidden fields keep
/// their value.
fn fill(inputs: &[(String, String, String)], login: &Login) -> Vec<(String, String)> {
    inputs
        .iter()
        .map(|(name, ty, value)| {
            let n = name.to_ascii_lowercase();
            let v = if ty == "password" {
                login.password.clone()
            } else if ty == "hidden" {
                value.clone()
            } else if n.contains("otp") || n.contains("code") || n.contains("totp") {
                login
                    .totp_secret
                    .as_deref()
                    .map(ztmesh_tests::totp::totp_now)
                    .unwrap_or_default()
            } else if n.contains("user")
                || n.contains("login")
                || n.contains("name")
                || n.contains("email")
            {
                login.user.clone()
            } else {
                value.clone()
            };
            (name.clone(), v)
        })
        .collect()
}

fn find_link(html: &str, needle: &str) -> Option<String> {
    let mut at = 0;
    while let Some(i) = html[at..].find("href=").map(|i| i + at) {
        let v = quoted(&html[i + 5..])?;
        if v.contains(needle) {
            return Some(decode_entities(&v));
        }
        at = i + 5;
    }
    None
}

/// The value of attribute `name` in one tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let pat = format!("{name}=");
    let mut at = 0;
    while let Some(i) = lower[at..].find(&pat).map(|i| i + at) {
        // Whole attribute names only (`name=` must not match `username=`).
        let before = lower[..i].chars().last().unwrap_or(' ');
        if before.is_whitespace() {
            return quoted(&tag[i + pat.len()..]).map(|v| decode_entities(&v));
        }
        at = i + pat.len();
    }
    None
}

fn quoted(s: &str) -> Option<String> {
    let q = s.chars().next()?;
    if q == '"' || q == '\'' {
        let rest = &s[1..];
        Some(rest[..rest.find(q)?].to_string())
    } else {
        let end = s
            .find(|c: char| c.is_whitespace() || c == '>')
            .unwrap_or(s.len());
        Some(s[..end].to_string())
    }
}

fn decode_entities(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

fn snippet(body: &str) -> String {
    body.chars().take(600).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_login_form_and_fills_it() {
        let html = r#"<form method="post" action="/interaction/abc/login"><input name="login" autofocus>
          <input name="password" type="password"><input name="otp" inputmode="numeric">
          <input type="hidden" name="csrf" value="t&amp;1"></form>"#;
        let f = find_login_form(html).unwrap();
        assert_eq!(f.action, "/interaction/abc/login");
        let login = Login {
            url: String::new(),
            user: "alice".into(),
            password: "pw".into(),
            totp_secret: Some("JBSWY3DPEHPK3PXP".into()),
            sso: true,
        };
        let filled = fill(&f.inputs, &login);
        assert_eq!(filled[0], ("login".into(), "alice".into()));
        assert_eq!(filled[1], ("password".into(), "pw".into()));
        assert_eq!(filled[2].1.len(), 6);
        assert_eq!(filled[3], ("csrf".into(), "t&1".into()));
        assert_eq!(
            find_link(
                r#"<a href="/x">x</a><a href="/oidc/start/L1">SSO</a>"#,
                "/oidc/start/"
            ),
            Some("/oidc/start/L1".into())
        );
    }
}
