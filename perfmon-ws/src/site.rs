//! Which browsers' requests are let in: the `Host` and `Origin` checks that
//! stop DNS rebinding and cross-site WebSocket hijacking.
//!
//! - `Host` must name the address the server is bound to (its IP literal,
//!   `localhost` for a loopback address, any IP literal when bound to all
//!   interfaces), or a name in `allowed_hosts`; the port is not checked (a
//!   browser puts the URL's own host in `Host`, so what matters is the name).
//!   A rebinding attack reaches the server under the attacker's host name,
//!   so it is refused. Requests without `Host` (not from a browser) pass.
//! - `Origin`, when present (browsers send it on WebSocket upgrades and
//!   cross-origin requests), must be the server's own (`http(s)://` + the
//!   request's `Host`) or be listed in `allowed_origins`. A page on another
//!   site cannot open the stream, even on a loopback sidecar without a token.
//!
//! `"*"` in either list turns that check off.

use std::net::{IpAddr, SocketAddr};

/// What a request may name as its host and origin.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// The address the server is bound to.
    pub(crate) bound: SocketAddr,
    /// Host names accepted besides the bound address (any port).
    pub(crate) allowed_hosts: Vec<String>,
    /// Origins accepted besides the server's own.
    pub(crate) allowed_origins: Vec<String>,
}

/// Why a request was refused (the 403 body says what to configure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// `Host` names neither the bound address nor an allowed host.
    #[error(
        "host {0:?} is not this server's address: use the address it is bound to, or add the \
         name with Config::allowed_hosts (a guard against DNS rebinding)"
    )]
    Host(String),
    /// A cross-origin browser request whose origin is not allowed.
    #[error(
        "origin {0:?} is not allowed: only this server's own pages may connect unless the \
         origin is added with Config::allowed_origins (a guard against cross-site WebSocket hijacking)"
    )]
    Origin(String),
}

/// Splits `host[:port]`, with IPv6 literals in brackets, lower-casing the host.
/// `None` for a value that is not a host (empty, a bad port, stray brackets).
pub(crate) fn split_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (inside, port)
    } else {
        match value.rsplit_once(':') {
            // More than one ':' without brackets is not a host.
            Some((h, _)) if h.contains(':') => return None,
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (value, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

impl Site {
    /// Checks `Host` and `Origin` (each `None` when absent).
    pub(crate) fn check(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), Refused> {
        if let Some(host) = host
            && !self.host_ok(host)
        {
            return Err(Refused::Host(host.to_owned()));
        }
        if let Some(origin) = origin
            && !self.origin_ok(origin, host)
        {
            return Err(Refused::Origin(origin.to_owned()));
        }
        Ok(())
    }

    fn host_ok(&self, value: &str) -> bool {
        if self.allowed_hosts.iter().any(|h| h == "*") {
            return true;
        }
        let Some((host, _port)) = split_host(value) else {
            return false;
        };
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
        {
            return true;
        }
        let ip = self.bound.ip();
        match host.parse::<IpAddr>() {
            Ok(named) => {
                named == ip || ip.is_unspecified() || (ip.is_loopback() && named.is_loopback())
            }
            Err(_) => host == "localhost" && (ip.is_loopback() || ip.is_unspecified()),
        }
    }

    fn origin_ok(&self, origin: &str, host: Option<&str>) -> bool {
        if self
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        // Same origin: the page was served by this server under this Host.
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        match (authority, host) {
            (Some(authority), Some(host)) => {
                split_host(authority).is_some_and(|a| Some(a) == split_host(host))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn site(bound: &str) -> Site {
        Site {
            bound: bound.parse().unwrap(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }

    #[test]
    fn hosts_must_name_the_bound_address() {
        let s = site("127.0.0.1:9464");
        for ok in [
            "127.0.0.1:9464",
            "localhost:9464",
            "LOCALHOST",
            "[::1]:9464",
            "127.0.0.1",
        ] {
            assert_eq!(s.check(Some(ok), None), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:9464",
            "evil.example",
            "10.0.0.1:9464",
            "",
            "[::1",
            "a:b:c",
            "localhost.evil.example",
        ] {
            assert!(s.check(Some(bad), None).is_err(), "{bad}");
        }
        assert_eq!(s.check(None, None), Ok(()), "no Host: not a browser");
        let all = site("0.0.0.0:9464");
        assert_eq!(all.check(Some("10.1.2.3:9464"), None), Ok(()));
        assert!(all.check(Some("rebind.example:9464"), None).is_err());
        let named = Site {
            allowed_hosts: vec!["perfmon.internal".into()],
            ..site("10.0.0.5:9464")
        };
        assert_eq!(named.check(Some("Perfmon.Internal"), None), Ok(()));
    }

    #[test]
    fn origins_must_be_the_servers_own_or_allowed() {
        let s = site("127.0.0.1:9464");
        let host = Some("127.0.0.1:9464");
        assert_eq!(s.check(host, Some("http://127.0.0.1:9464")), Ok(()));
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9465",
            "file://",
            "127.0.0.1:9464",
        ] {
            assert!(s.check(host, Some(bad)).is_err(), "{bad}");
        }
        let allowed = Site {
            allowed_origins: vec!["https://grafana.example".into()],
            ..site("127.0.0.1:9464")
        };
        assert_eq!(allowed.check(host, Some("https://grafana.example")), Ok(()));
        let any = Site {
            allowed_origins: vec!["*".into()],
            ..site("127.0.0.1:9464")
        };
        assert_eq!(any.check(host, Some("http://evil.example")), Ok(()));
    }

    proptest! {
        /// Any Host or Origin value: an answer, never a panic; and a host
        /// that parses always round-trips to the same split.
        #[test]
        fn fuzz_host_and_origin_headers(host in ".{0,40}", origin in ".{0,40}") {
            let s = site("127.0.0.1:9464");
            let _ = s.check(Some(&host), Some(&origin));
            if let Some((h, p)) = split_host(&host) {
                let again = match p {
                    Some(p) if h.contains(':') => format!("[{h}]:{p}"),
                    Some(p) => format!("{h}:{p}"),
                    None if h.contains(':') => format!("[{h}]"),
                    None => h.clone(),
                };
                prop_assert_eq!(split_host(&again), Some((h, p)));
            }
        }
    }
}
