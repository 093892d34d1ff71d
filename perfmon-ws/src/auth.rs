//! Who may connect: a bearer token, or your own [`Authorizer`].
//!
//! Checked before routing, so before any WebSocket upgrade: a refusal is a
//! plain HTTP 401. Tokens never appear in logs or `Debug` output.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// The credentials a request carries.
#[non_exhaustive]
pub struct Access<'a> {
    /// `Authorization: Bearer <token>`.
    pub bearer: Option<&'a str>,
    /// `?token=<token>` (for browsers, which cannot set headers on WebSockets).
    pub query_token: Option<String>,
    /// All request headers: read them with [`Access::header`].
    headers: &'a HeaderMap,
}

impl std::fmt::Debug for Access<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("bearer", &self.bearer.map(|_| "(redacted)"))
            .field(
                "query_token",
                &self.query_token.as_ref().map(|_| "(redacted)"),
            )
            .finish_non_exhaustive()
    }
}

impl<'a> Access<'a> {
    pub(crate) fn from_request(headers: &'a HeaderMap, query: Option<&str>) -> Self {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        // Parsed as axum's `Query` does; a malformed query carries no token.
        let query_token = query
            .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "token"))
            .map(|(_, v)| v);
        Access {
            bearer,
            query_token,
            headers,
        }
    }

    /// A request header's value, for custom schemes (JWT, cookies, ...);
    /// `None` if absent or not text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The token from the header, else from the query.
    pub fn token(&self) -> Option<&str> {
        self.bearer.or(self.query_token.as_deref())
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 7235 §2.1); any other scheme gives `None`.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Encodes everything but URL-unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// as `%XX`: a safe query value or path segment. The inverse of
/// [`percent_decode`].
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` in a URL query value or path segment.
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request was refused. The message is sent in the 401 body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials.
    #[error("a token is required: send `Authorization: Bearer <token>` or add `?token=<token>`")]
    Missing,
    /// Wrong credentials.
    #[error("the token is not valid")]
    Invalid,
    /// Refused by a custom [`Authorizer`], with its reason.
    #[error("{0}")]
    Refused(String),
}

/// Decides whether a request may proceed.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` lets the request in.
    ///
    /// # Errors
    ///
    /// The reason to refuse it with (HTTP 401).
    fn authorize(&self, access: &Access<'_>) -> Result<(), AuthError>;
}

/// One shared bearer token, compared in constant time.
pub struct BearerToken(Vec<u8>);

impl BearerToken {
    /// Requires `token` on every request.
    pub fn new(token: impl Into<String>) -> Self {
        BearerToken(token.into().into_bytes())
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(redacted)")
    }
}

impl Authorizer for BearerToken {
    fn authorize(&self, access: &Access<'_>) -> Result<(), AuthError> {
        let given = access.token().ok_or(AuthError::Missing)?;
        // Constant time in the content; the length may show, as usual.
        if bool::from(given.as_bytes().ct_eq(&self.0)) {
            Ok(())
        } else {
            Err(AuthError::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_header_or_query() {
        let mut headers = HeaderMap::new();
        let auth = BearerToken::new("s3 cret");
        assert!(matches!(
            auth.authorize(&Access::from_request(&headers, None)),
            Err(AuthError::Missing)
        ));
        let q = Access::from_request(&headers, Some("since=4&token=s3%20cret"));
        assert!(auth.authorize(&q).is_ok());
        headers.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(matches!(
            auth.authorize(&Access::from_request(&headers, None)),
            Err(AuthError::Invalid)
        ));
        assert!(
            !format!("{:?}", Access::from_request(&headers, Some("token=s3cret")))
                .contains("s3cret")
        );
    }

    proptest::proptest! {
        /// Any `Authorization` value: a token only from the Bearer scheme,
        /// non-empty, and found in the value; never a panic.
        #[test]
        fn fuzz_authorization_header(value in "(?s).{0,80}", scheme in "[bB][eE][aA][rR][eE][rR]", token in "[!-~]{1,40}") {
            if let Some(t) = bearer_token(&value) {
                proptest::prop_assert!(!t.is_empty() && value.contains(t));
                proptest::prop_assert!(value.trim_start().to_ascii_lowercase().starts_with("bearer "));
            }
            let value = format!("{scheme} {token}");
            proptest::prop_assert_eq!(bearer_token(&value), Some(token.as_str()));
        }

        /// Any query string: a token or none, never a panic; and a token
        /// sent URL-encoded comes back exactly.
        #[test]
        fn fuzz_query_string_token(query in "(?s).{0,120}", token in "(?s).{0,40}") {
            let headers = HeaderMap::new();
            let _ = Access::from_request(&headers, Some(&query)).token().map(str::len);
            let encoded = serde_urlencoded::to_string([("since", "3"), ("token", token.as_str())]).unwrap();
            let access = Access::from_request(&headers, Some(&encoded));
            proptest::prop_assert_eq!(access.token(), Some(token.as_str()));
        }

        /// Any path segment (a room name): decoded without a panic, and an
        /// encoded name decodes back to itself.
        #[test]
        fn fuzz_room_names(raw in "(?s).{0,80}", name in "(?s).{0,40}") {
            let _ = percent_decode(&raw);
            let encoded: String = name
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            proptest::prop_assert_eq!(percent_decode(&encoded), name);
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer t0k", "bearer t0k", "BEARER   t0k ", " Bearer t0k"] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value:?}");
        }
        for value in ["Basic dXNlcg==", "Bearer", "Bearer ", "Bearert0k", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
