//! SSRF guard: refuses upstream URLs that resolve to loopback, link-local (which includes
//! the cloud metadata endpoints), unspecified or multicast addresses unless the policy
//! allows them. The checked addresses are returned so the HTTP client can be pinned to
//! them (no second resolution an attacker's DNS could answer differently).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::SsrfPolicy;

/// Why an upstream URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// Not a usable http(s) URL.
    #[error("invalid upstream url: {0}")]
    BadUrl(String),
    /// The host does not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// Host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The host resolves to a forbidden address.
    #[error(
        "upstream {host} resolves to {addr}, a {class} address; refused (see --allow-{flag}-upstreams)"
    )]
    Forbidden {
        /// Host.
        host: String,
        /// Offending address.
        addr: IpAddr,
        /// Address class.
        class: &'static str,
        /// Flag that would allow it.
        flag: &'static str,
    },
}

/// A checked upstream: host and the addresses to pin (`None` for IP literals).
#[derive(Debug, Clone)]
pub struct CheckedTarget {
    /// `(host, addresses)` to pin in the HTTP client.
    pub pinned: Option<(String, Vec<SocketAddr>)>,
}

/// The IPv4 address an IPv6 address carries and that a translator or tunnel would
/// reach: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated, but
/// some stacks still route it), NAT64 `64:ff9b::/96` and `64:ff9b:1::/48` (RFC 6052,
/// 8215; the address sits in the last 32 bits), 6to4 `2002:AABB:CCDD::/48` and Teredo
/// `2001:0::/32` (client address in the last 32 bits, inverted).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = v6.segments();
    let last32 = || Ipv4Addr::from(u128::from(v6) as u32);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match seg {
        // `::` and `::1` are IPv6's own unspecified and loopback, classified below.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(last32()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => Some(last32()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!(u128::from(v6) as u32))),
        _ => None,
    }
}

/// Address class and the flag that allows it; `None` when always allowed. An IPv6
/// address that embeds an IPv4 one is judged by the IPv4 address it would reach.
fn classify(ip: IpAddr) -> Option<(&'static str, &'static str)> {
    let ip = match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some(("loopback", "loopback"))
            } else if v4.is_link_local() {
                Some(("link-local/metadata", "link-local"))
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some(("unspecified/broadcast/multicast", "never"))
            } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
                // Alibaba Cloud metadata.
                Some(("metadata", "link-local"))
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some(("loopback", "loopback"))
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some(("link-local", "link-local"))
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                // AWS IMDS over IPv6.
                Some(("metadata", "link-local"))
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some(("unspecified/multicast", "never"))
            } else {
                None
            }
        }
    }
}

fn check_ip(host: &str, ip: IpAddr, policy: SsrfPolicy) -> Result<(), SsrfError> {
    match classify(ip) {
        None => Ok(()),
        Some((_, "loopback")) if policy.allow_loopback => Ok(()),
        Some((_, "link-local")) if policy.allow_link_local => Ok(()),
        Some((class, flag)) => Err(SsrfError::Forbidden {
            host: host.to_owned(),
            addr: ip,
            class,
            flag,
        }),
    }
}

/// Parses, resolves (under `timeout`) and checks an upstream URL.
pub async fn check_upstream_url(
    url: &str,
    policy: SsrfPolicy,
    timeout: Duration,
) -> Result<CheckedTarget, SsrfError> {
    let parsed = url::Url::parse(url).map_err(|e| SsrfError::BadUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(SsrfError::BadUrl("scheme must be http or https".into()));
    }
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| SsrfError::BadUrl("no port".into()))?;
    match parsed.host() {
        None => Err(SsrfError::BadUrl("no host".into())),
        Some(url::Host::Ipv4(ip)) => {
            check_ip(&ip.to_string(), IpAddr::V4(ip), policy)?;
            Ok(CheckedTarget { pinned: None })
        }
        Some(url::Host::Ipv6(ip)) => {
            check_ip(&ip.to_string(), IpAddr::V6(ip), policy)?;
            Ok(CheckedTarget { pinned: None })
        }
        Some(url::Host::Domain(host)) => {
            let lower = host.to_ascii_lowercase();
            if (lower == "metadata.google.internal" || lower == "metadata")
                && !policy.allow_link_local
            {
                return Err(SsrfError::Forbidden {
                    host: host.to_owned(),
                    addr: IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
                    class: "metadata",
                    flag: "link-local",
                });
            }
            let addrs: Vec<SocketAddr> =
                match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
                    Err(_) => {
                        return Err(SsrfError::Resolve {
                            host: host.to_owned(),
                            reason: format!("timed out after {timeout:?}"),
                        });
                    }
                    Ok(Err(e)) => {
                        return Err(SsrfError::Resolve {
                            host: host.to_owned(),
                            reason: e.to_string(),
                        });
                    }
                    Ok(Ok(a)) => a.collect(),
                };
            if addrs.is_empty() {
                return Err(SsrfError::Resolve {
                    host: host.to_owned(),
                    reason: "no addresses".into(),
                });
            }
            for a in &addrs {
                check_ip(host, a.ip(), policy)?;
            }
            Ok(CheckedTarget {
                pinned: Some((host.to_owned(), addrs)),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn guard_table() {
        let deny = SsrfPolicy::default();
        let loopback = SsrfPolicy {
            allow_loopback: true,
            allow_link_local: false,
        };
        let t = Duration::from_secs(5);
        let cases: &[(&str, &str, SsrfPolicy, bool)] = &[
            ("loopback v4", "http://127.0.0.1:8080/mcp", deny, false),
            ("loopback v4 other", "http://127.1.2.3/mcp", deny, false),
            ("loopback v6", "http://[::1]:8080/mcp", deny, false),
            (
                "v4-mapped loopback",
                "http://[::ffff:127.0.0.1]/mcp",
                deny,
                false,
            ),
            ("localhost name", "http://localhost:1/mcp", deny, false),
            (
                "aws metadata",
                "http://169.254.169.254/latest/meta-data",
                deny,
                false,
            ),
            (
                "metadata even with loopback allowed",
                "http://169.254.169.254/",
                loopback,
                false,
            ),
            (
                "gcp metadata name",
                "http://metadata.google.internal/",
                deny,
                false,
            ),
            ("link-local v6", "http://[fe80::1]/", deny, false),
            ("unspecified", "http://0.0.0.0:80/", loopback, false),
            (
                "loopback allowed",
                "http://127.0.0.1:8080/mcp",
                loopback,
                true,
            ),
            ("public literal", "https://93.184.216.34/mcp", deny, true),
            ("private range allowed", "http://10.1.2.3/mcp", deny, true),
            ("bad scheme", "file:///etc/passwd", loopback, false),
            (
                "ipv4-compatible loopback",
                "http://[::127.0.0.1]/mcp",
                deny,
                false,
            ),
            (
                "ipv4-compatible metadata",
                "http://[::a9fe:a9fe]/",
                deny,
                false,
            ),
            (
                "nat64 loopback",
                "http://[64:ff9b::7f00:1]/mcp",
                deny,
                false,
            ),
            (
                "nat64 metadata",
                "http://[64:ff9b::169.254.169.254]/",
                loopback,
                false,
            ),
            (
                "local-use nat64 metadata",
                "http://[64:ff9b:1::a9fe:a9fe]/",
                deny,
                false,
            ),
            ("6to4 loopback", "http://[2002:7f00:1::]/mcp", deny, false),
            ("6to4 metadata", "http://[2002:a9fe:a9fe::1]/", deny, false),
            (
                "teredo client loopback",
                "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
                deny,
                false,
            ),
            (
                "nat64 of a public address",
                "http://[64:ff9b::5db8:d822]/mcp",
                deny,
                true,
            ),
            (
                "6to4 of a public address",
                "http://[2002:5db8:d822::1]/",
                deny,
                true,
            ),
            ("global v6", "http://[2606:4700::1111]/mcp", deny, true),
        ];
        for (name, url, policy, ok) in cases {
            let got = check_upstream_url(url, *policy, t).await;
            assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
        }
    }
}
