//! Credentials from a containers `auth.json` (or Docker `config.json`):
//! `{"auths": {"HOST[:PORT][/PATH]": {"auth": base64("user:password")}}}`.
//! The most specific key for the image wins, as for the containers tools.

use std::collections::HashMap;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::Error;

/// The largest auth file read; real ones are a few kilobytes.
const MAX_AUTH_FILE: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    /// An OAuth2 refresh token (Docker's `identitytoken`), which stands
    /// in for the password when set.
    identitytoken: Option<String>,
}

/// Parsed auth.json content.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    by_key: HashMap<String, AuthEntry>,
}

impl Credentials {
    /// Read an auth file, `what` naming it in errors.
    pub(crate) fn read(reader: impl std::io::Read, what: &str) -> Result<Self, Error> {
        use std::io::Read as _;
        let invalid = |reason: String| Error::InvalidRegistryConfig {
            what: what.to_owned(),
            reason,
        };
        let mut bytes = Vec::new();
        reader
            .take(MAX_AUTH_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(e.to_string()))?;
        if bytes.len() as u64 > MAX_AUTH_FILE {
            return Err(invalid(format!("larger than {MAX_AUTH_FILE} bytes")));
        }
        let file: AuthFile = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let by_key = file
            .auths
            .into_iter()
            .map(|(key, entry)| (normalise(&key), entry))
            .collect();
        Ok(Credentials { by_key })
    }

    /// The credentials for `host/repository`: the longest key that is the
    /// image's repository, a namespace of it, or its registry. Anonymous
    /// when none matches.
    pub(crate) fn for_image(&self, host: &str, repository: &str) -> Result<RegistryAuth, Error> {
        let mut path = format!("{host}/{repository}");
        loop {
            if let Some(entry) = self.by_key.get(&path) {
                return entry.auth(&path);
            }
            match path.rsplit_once('/') {
                Some((parent, _)) => path = parent.to_owned(),
                None => return Ok(RegistryAuth::Anonymous),
            }
        }
    }
}

impl AuthEntry {
    fn auth(&self, key: &str) -> Result<RegistryAuth, Error> {
        let invalid = |reason: &str| Error::InvalidRegistryConfig {
            what: format!("the auth file entry for {key}"),
            reason: reason.to_owned(),
        };
        // The containers tools trade an identity token for an access token
        // at the registry's token endpoint (grant_type=refresh_token), a
        // flow the registry client lacks; Basic with "<token>" would only
        // be refused by the registry, and anonymous access would hide why.
        if self.identitytoken.as_deref().is_some_and(|t| !t.is_empty()) {
            return Err(invalid(
                "identity tokens (\"identitytoken\") are not supported; \
                 log in with a user name and password or a registry access token",
            ));
        }
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
        }
        let Some(encoded) = &self.auth else {
            return Ok(RegistryAuth::Anonymous);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| invalid("\"auth\" is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| invalid("\"auth\" is not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| invalid("\"auth\" is not user:password"))?;
        Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
    }
}

/// Docker's keys may carry a scheme and a `/v1/` suffix; containers'
/// carry neither. Both name the same registry.
fn normalise(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key.strip_suffix("/v1").unwrap_or(key);
    match key {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    }

    #[test]
    fn the_most_specific_key_gives_the_credentials() {
        let file = format!(
            r#"{{"auths": {{
                "127.0.0.1:5000": {{"auth": "{}"}},
                "127.0.0.1:5000/team": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}}
            }}}}"#,
            basic("alice", "a:b"),
            basic("bob", "pw"),
            basic("carol", "pw")
        );
        let creds = Credentials::read(file.as_bytes(), "auth.json").unwrap();
        let auth = |host, repo| match creds.for_image(host, repo).unwrap() {
            RegistryAuth::Basic(user, password) => format!("{user}/{password}"),
            RegistryAuth::Anonymous => "anonymous".to_owned(),
            RegistryAuth::Bearer(_) => "bearer".to_owned(),
        };
        assert_eq!(auth("127.0.0.1:5000", "app"), "alice/a:b");
        assert_eq!(auth("127.0.0.1:5000", "team/app"), "bob/pw");
        assert_eq!(auth("127.0.0.1:5000", "teamwork/app"), "alice/a:b");
        assert_eq!(auth("docker.io", "library/debian"), "carol/pw");
        assert_eq!(auth("127.0.0.1:5001", "app"), "anonymous");
    }

    #[test]
    fn a_damaged_auth_file_is_a_typed_error() {
        for bad in [
            "{".to_owned(),
            r#"{"auths": {"h": {"auth": "!!"}}}"#.to_owned(),
            // base64 of "nocolon": no user:password pair.
            r#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#.to_owned(),
            // An OAuth2 refresh token, even beside a user:password.
            format!(
                r#"{{"auths": {{"h": {{"auth": "{}", "identitytoken": "t"}}}}}}"#,
                basic("u", "p")
            ),
        ] {
            let result =
                Credentials::read(bad.as_bytes(), "auth.json").and_then(|c| c.for_image("h", "r"));
            assert!(
                matches!(result, Err(Error::InvalidRegistryConfig { .. })),
                "{bad}: {result:?}"
            );
        }
    }
}
