//! [`Rest`]: the sidecar's (or collector's) REST API, with the token, a
//! timeout and one clear error per failure ([`CliError`]). Bottom of the
//! command line's dependency order.

use std::time::Duration;

use serde_json::Value;

/// Why a command failed: one line each, saying what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Nothing answered at the URL.
    #[error("cannot reach {url}: {reason}; is the sidecar (or collector) running there?")]
    Unreachable {
        /// The URL.
        url: String,
        /// The error.
        reason: String,
    },
    /// The server refused the token (or wants one).
    #[error("{url} refused the token (401): pass --token or set PERFMON_TOKEN")]
    Unauthorized {
        /// The URL.
        url: String,
    },
    /// No such pipeline (or other resource).
    #[error("{what}")]
    NotFound {
        /// The server's message.
        what: String,
    },
    /// The server answered something else.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The body (cut).
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("{url} answered something that is not perfmon's JSON: {reason}")]
    Decode {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The URL given is not an http:// URL.
    #[error("{0:?} is not an http://HOST:PORT URL of a sidecar")]
    Url(String),
}

/// A sidecar's REST API.
#[derive(Debug, Clone)]
pub struct Rest {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Rest {
    /// The API at `url` (`http://HOST:PORT`, a trailing `/` or not).
    ///
    /// # Errors
    ///
    /// [`CliError::Url`] for anything but an http:// URL.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, CliError> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(CliError::Url(url.to_owned()));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Rest { base, token, agent })
    }

    /// `http://HOST:PORT` without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL of the stream: `ws://HOST:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws{}/ws", &self.base["http".len()..])
    }

    /// `GET path` as JSON.
    ///
    /// # Errors
    ///
    /// See [`CliError`]: unreachable, 401, 404 (with the server's message),
    /// another status, or not JSON.
    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::Decode {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        match status {
            200 => serde_json::from_str(&body).map_err(|e| CliError::Decode {
                url,
                reason: e.to_string(),
            }),
            401 => Err(CliError::Unauthorized {
                url: self.base.clone(),
            }),
            404 => Err(CliError::NotFound {
                what: serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("nothing at {url}")),
            }),
            _ => Err(CliError::Status {
                url,
                status,
                body: body.chars().take(200).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_the_stream_url_derived() {
        let rest = Rest::new("http://127.0.0.1:9464/", None).unwrap();
        assert_eq!(rest.base(), "http://127.0.0.1:9464");
        assert_eq!(rest.ws_url(), "ws://127.0.0.1:9464/ws");
        assert!(matches!(
            Rest::new("127.0.0.1:9464", None),
            Err(CliError::Url(_))
        ));
    }
}
