//! Parsing of `rtmp://host[:port]/app[/inst]/streamkey` destinations, with errors that say
//! which part is wrong, because a mistyped URL is the most common first-run failure.

use std::fmt;

/// Default RTMP port when the URL does not name one.
pub const DEFAULT_PORT: u16 = 1935;

/// A parsed RTMP destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    /// The application, e.g. `live` (may contain `/` for `app/instance`).
    pub app: String,
    /// The stream key: the last path segment. Never logged in full.
    pub stream_key: String,
}

/// Why a destination URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("'{0}' is not an RTMP URL: it must start with rtmp:// (for example rtmp://127.0.0.1:1935/live/test)")]
    Scheme(String),
    #[error("'{0}' has no host: write rtmp://HOST[:PORT]/APP/STREAMKEY")]
    NoHost(String),
    #[error("'{url}' has an invalid port '{port}': use a number from 1 to 65535")]
    Port { url: String, port: String },
    #[error("'{0}' has no application name: write rtmp://HOST[:PORT]/APP/STREAMKEY (APP is usually 'live')")]
    NoApp(String),
    #[error(
        "'{0}' has no stream key: add it after the application, e.g. rtmp://HOST/live/STREAMKEY"
    )]
    NoStreamKey(String),
    #[error("rtmps:// (RTMP over TLS) is not supported yet: use an rtmp:// URL")]
    Tls,
}

impl RtmpUrl {
    /// Parses a full URL whose last path segment is the stream key.
    pub fn parse(url: &str) -> Result<RtmpUrl, UrlError> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("rtmps://") {
            return Err(UrlError::Tls);
        }
        let rest = if lower.starts_with("rtmp://") {
            &url[7..]
        } else {
            return Err(UrlError::Scheme(url.to_string()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(UrlError::NoHost(url.to_string()));
        }
        let (host, port) = split_host_port(authority, url)?;
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Err(UrlError::NoApp(url.to_string()));
        }
        let (app, key) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => return Err(UrlError::NoStreamKey(url.to_string())),
        };
        if app.is_empty() {
            return Err(UrlError::NoApp(url.to_string()));
        }
        if key.is_empty() {
            return Err(UrlError::NoStreamKey(url.to_string()));
        }
        Ok(RtmpUrl {
            host,
            port,
            app: app.to_string(),
            stream_key: key.to_string(),
        })
    }

    /// `host:port`, for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The tcUrl sent in the connect command: the URL without the stream key.
    pub fn tc_url(&self) -> String {
        format!("rtmp://{}/{}", self.address(), self.app)
    }

    /// The stream key with all but its first two characters hidden, for logs and status.
    pub fn masked_key(&self) -> String {
        mask_key(&self.stream_key)
    }
}

/// Hides a secret stream key, keeping a short prefix so the user can tell keys apart.
pub fn mask_key(key: &str) -> String {
    let shown: String = key.chars().take(2).collect();
    if key.chars().count() <= 4 {
        return format!("{shown}**");
    }
    format!("{shown}{}", "*".repeat(6))
}

impl fmt::Display for RtmpUrl {
    /// Displays the URL with the stream key masked, so it is safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tc_url(), self.masked_key())
    }
}

fn split_host_port(authority: &str, url: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        // IPv6 literal: [::1]:1935
        let end = stripped
            .find(']')
            .ok_or_else(|| UrlError::NoHost(url.to_string()))?;
        let host = &stripped[..end];
        let after = &stripped[end + 1..];
        let port = after.strip_prefix(':');
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost(url.to_string()));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(UrlError::Port {
                    url: url.to_string(),
                    port: p.to_string(),
                })
            }
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let u = RtmpUrl::parse("rtmp://example.com:1936/live/abc123").unwrap();
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, 1936);
        assert_eq!(u.app, "live");
        assert_eq!(u.stream_key, "abc123");
        assert_eq!(u.tc_url(), "rtmp://example.com:1936/live");
    }

    #[test]
    fn default_port_and_nested_app() {
        let u = RtmpUrl::parse("RTMP://10.0.0.1/app/inst/key").unwrap();
        assert_eq!(u.port, 1935);
        assert_eq!(u.app, "app/inst");
        assert_eq!(u.stream_key, "key");
    }

    #[test]
    fn ipv6_host() {
        let u = RtmpUrl::parse("rtmp://[::1]:2000/live/k").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.address(), "[::1]:2000");
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            RtmpUrl::parse("http://x/live/k"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            RtmpUrl::parse("rtmp:///live/k"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            RtmpUrl::parse("rtmp://h:99999/live/k"),
            Err(UrlError::Port { .. })
        ));
        assert!(matches!(
            RtmpUrl::parse("rtmp://h:abc/live/k"),
            Err(UrlError::Port { .. })
        ));
        assert!(matches!(
            RtmpUrl::parse("rtmp://h"),
            Err(UrlError::NoApp(_))
        ));
        assert!(matches!(
            RtmpUrl::parse("rtmp://h/live"),
            Err(UrlError::NoStreamKey(_))
        ));
        assert!(matches!(
            RtmpUrl::parse("rtmp://h/live/"),
            Err(UrlError::NoStreamKey(_))
        ));
        assert_eq!(RtmpUrl::parse("rtmps://h/live/k"), Err(UrlError::Tls));
    }

    #[test]
    fn display_masks_key() {
        let u = RtmpUrl::parse("rtmp://h/live/supersecret").unwrap();
        let shown = u.to_string();
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.starts_with("rtmp://h:1935/live/su"));
    }
}
