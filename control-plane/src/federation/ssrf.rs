//! SSRF guard: refuses upstream URLs that resolve to addresses the control plane must not
//! reach on an operator's (or an attacker's) say-so: its own host (loopback, "this
//! network"), link-local and cloud metadata endpoints, broadcast, multicast and reserved
//! space. The checked addresses are returned so the HTTP client can be pinned to them (no
//! second resolution an attacker's DNS could answer differently).
//!
//! Private networks (RFC 1918, IPv6 unique-local `fc00::/7`, the deprecated site-local
//! `fec0::/10`, and the shared address space `100.64.0.0/10`) are where self-hosted
//! upstreams live, so they are allowed unless the operator says `--deny-private-upstreams`.
//! `100.64.0.0/10` is carrier-grade NAT space, and inside clouds and overlay networks
//! (Tailscale, Alibaba Cloud) it addresses internal hosts: it is treated as private, not
//! global, and its one metadata address (`100.100.100.200`) is refused as metadata.
//!
//! An IPv6 address that carries an IPv4 one (mapped, translated, compatible, NAT64, 6to4,
//! Teredo, ISATAP) is judged by every IPv4 address it may reach: a translator or tunnel
//! delivers it there.
//!
//! Errors say what class an address is, never the address a *name* resolved to: the admin
//! API must not become a way to read the control plane's internal DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::SsrfPolicy;
use crate::model::UpstreamUrl;

/// Why an upstream URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// The host does not resolve (the resolver's own words go to the log only).
    #[error("cannot resolve {host}")]
    Resolve {
        /// Host.
        host: String,
    },
    /// The host is, or resolves to, a forbidden address.
    #[error("upstream {host} is a {class} address ({what}); refused{}", hint(.flag))]
    Forbidden {
        /// Host as written in the URL.
        host: String,
        /// Offending address (logged, not shown: it may be what a name resolved to).
        addr: IpAddr,
        /// Address class.
        class: &'static str,
        /// What the class covers.
        what: &'static str,
        /// How the operator could allow it, if at all.
        flag: Option<&'static str>,
    },
}

fn hint(flag: &Option<&'static str>) -> String {
    match flag {
        Some(f) => format!(" (see {f})"),
        None => " (never allowed)".to_owned(),
    }
}

impl SsrfError {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Resolve { .. } => "resolve",
            Self::Forbidden { .. } => "forbidden",
        }
    }
}

/// A checked upstream: host and the addresses to pin (`None` for IP literals).
#[derive(Debug, Clone)]
pub struct CheckedTarget {
    /// `(host, addresses)` to pin in the HTTP client.
    pub pinned: Option<(String, Vec<SocketAddr>)>,
}

/// What an address is, as far as the guard cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Routable public address.
    Global,
    /// RFC 1918, unique-local, site-local, shared address space.
    Private,
    /// The control plane's own host.
    Loopback,
    /// Link-local (where most cloud metadata services answer).
    LinkLocal,
    /// A cloud metadata or platform service outside link-local space.
    Metadata,
    /// `0.0.0.0/8` ("this network": Linux connects `0.x` to the local host) and `::`.
    ThisNetwork,
    /// Broadcast and multicast: no single upstream answers.
    Broadcast,
    /// Reserved space (`240.0.0.0/4`, `192.0.0.0/24`): not an upstream's address.
    Reserved,
}

impl Class {
    /// `(class, what it covers, flag that allows it)`; `None` for `Global`.
    fn describe(self) -> Option<(&'static str, &'static str, Option<&'static str>)> {
        match self {
            Class::Global => None,
            Class::Private => Some((
                "private",
                "RFC 1918, fc00::/7, fec0::/10, 100.64.0.0/10",
                Some("--deny-private-upstreams, which is set"),
            )),
            Class::Loopback => Some((
                "loopback",
                "127.0.0.0/8, ::1",
                Some("--allow-loopback-upstreams"),
            )),
            Class::LinkLocal => Some((
                "link-local/metadata",
                "169.254.0.0/16, fe80::/10",
                Some("--allow-link-local-upstreams"),
            )),
            Class::Metadata => Some((
                "metadata",
                "a cloud metadata or platform service",
                Some("--allow-link-local-upstreams"),
            )),
            Class::ThisNetwork => Some(("unspecified", "0.0.0.0/8, ::", None)),
            Class::Broadcast => Some((
                "broadcast/multicast",
                "255.255.255.255, 224.0.0.0/4, ff00::/8",
                None,
            )),
            Class::Reserved => Some(("reserved", "240.0.0.0/4, 192.0.0.0/24", None)),
        }
    }

    /// How bad it is to reach, to pick the worst of several candidates.
    fn severity(self) -> u8 {
        match self {
            Class::Global => 0,
            Class::Private => 1,
            Class::Loopback | Class::LinkLocal | Class::Metadata => 2,
            Class::ThisNetwork | Class::Broadcast | Class::Reserved => 3,
        }
    }
}

/// Whether `ip` lies in `net/len`.
fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// Whether `ip` lies in `net/len`.
fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    // First match wins: the single metadata addresses sit inside wider ranges.
    const TABLE: &[([u8; 4], u32, Class)] = &[
        ([0, 0, 0, 0], 8, Class::ThisNetwork),
        ([127, 0, 0, 0], 8, Class::Loopback),
        ([169, 254, 0, 0], 16, Class::LinkLocal),
        // Alibaba Cloud metadata.
        ([100, 100, 100, 200], 32, Class::Metadata),
        // Azure WireServer (platform agent, metadata relay).
        ([168, 63, 129, 16], 32, Class::Metadata),
        // Oracle Cloud legacy metadata.
        ([192, 0, 0, 192], 32, Class::Metadata),
        ([192, 0, 0, 0], 24, Class::Reserved),
        ([10, 0, 0, 0], 8, Class::Private),
        ([172, 16, 0, 0], 12, Class::Private),
        ([192, 168, 0, 0], 16, Class::Private),
        ([100, 64, 0, 0], 10, Class::Private),
        ([255, 255, 255, 255], 32, Class::Broadcast),
        ([224, 0, 0, 0], 4, Class::Broadcast),
        ([240, 0, 0, 0], 4, Class::Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map_or(Class::Global, |(_, _, c)| *c)
}

/// The IPv4 addresses an IPv6 address may deliver to through a translator or tunnel.
fn embedded_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    let last32 = Ipv4Addr::from(bits as u32);
    let seg = v6.segments();
    let mut out = Vec::new();
    match seg {
        // `::` and `::1` are IPv6's own unspecified and loopback, classified as such.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => {}
        // IPv4-compatible `::a.b.c.d` (deprecated, still routed by some stacks) and
        // IPv4-mapped `::ffff:a.b.c.d`.
        [0, 0, 0, 0, 0, 0 | 0xffff, _, _] => out.push(last32),
        // IPv4-translated `::ffff:0:a.b.c.d` (RFC 2765 SIIT).
        [0, 0, 0, 0, 0xffff, 0, _, _] => out.push(last32),
        // Well-known NAT64 prefix `64:ff9b::/96` (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => out.push(last32),
        // Local-use NAT64 `64:ff9b:1::/48` (RFC 8215): the operator picks the prefix
        // length, so every RFC 6052 position that fits is a candidate.
        [0x64, 0xff9b, 1, ..] => {
            let b = v6.octets();
            // /48: octets 6,7 | 9,10 (octet 8 is the reserved u-octet).
            out.push(Ipv4Addr::new(b[6], b[7], b[9], b[10]));
            // /56: octet 7 | 9,10,11.
            out.push(Ipv4Addr::new(b[7], b[9], b[10], b[11]));
            // /64: octets 9..=12.
            out.push(Ipv4Addr::new(b[9], b[10], b[11], b[12]));
            // /96: the last four.
            out.push(last32);
        }
        // 6to4 `2002:AABB:CCDD::/48`: the relay's IPv4 address follows the prefix.
        [0x2002, hi, lo, ..] => {
            out.push(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
        }
        // Teredo `2001:0::/32`: the client's address, inverted, in the last 32 bits.
        [0x2001, 0, ..] => out.push(Ipv4Addr::from(!(bits as u32))),
        _ => {}
    }
    // ISATAP interface identifier `::0:5efe:a.b.c.d` / `::200:5efe:a.b.c.d` (any prefix).
    if seg[4] & 0xfdff == 0 && seg[5] == 0x5efe {
        out.push(last32);
    }
    out
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    if ip.is_unspecified() {
        return Class::ThisNetwork;
    }
    if ip.is_loopback() {
        return Class::Loopback;
    }
    // Judged by the worst IPv4 address it may reach.
    let carried = embedded_v4(ip)
        .into_iter()
        .map(classify_v4)
        .max_by_key(|c| c.severity());
    if let Some(c) = carried.filter(|c| *c != Class::Global) {
        return c;
    }
    const TABLE: &[(Ipv6Addr, u32, Class)] = &[
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
            Class::LinkLocal,
        ),
        // AWS internal services: IMDS (fd00:ec2::254), DNS (::253), NTP (::123).
        (
            Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0),
            32,
            Class::Metadata,
        ),
        (
            Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            Class::Private,
        ),
        (
            Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            10,
            Class::Private,
        ),
        (
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
            Class::Broadcast,
        ),
    ];
    TABLE
        .iter()
        .find(|(net, len, _)| in_v6(ip, *net, *len))
        .map_or(Class::Global, |(_, _, c)| *c)
}

fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn allowed(class: Class, policy: SsrfPolicy) -> bool {
    match class {
        Class::Global => true,
        Class::Private => !policy.deny_private,
        Class::Loopback => policy.allow_loopback,
        Class::LinkLocal | Class::Metadata => policy.allow_link_local,
        Class::ThisNetwork | Class::Broadcast | Class::Reserved => false,
    }
}

fn check_ip(host: &str, ip: IpAddr, policy: SsrfPolicy) -> Result<(), SsrfError> {
    let class = classify(ip);
    if allowed(class, policy) {
        return Ok(());
    }
    let (name, what, flag) = class.describe().unwrap_or(("forbidden", "forbidden", None));
    tracing::info!(%host, addr = %ip, class = name, "upstream address refused by the SSRF guard");
    Err(SsrfError::Forbidden {
        host: host.to_owned(),
        addr: ip,
        class: name,
        what,
        flag,
    })
}

/// Resolves (under `timeout`) and checks an upstream URL, parsed once already.
pub async fn check_upstream_url(
    url: &UpstreamUrl,
    policy: SsrfPolicy,
    timeout: Duration,
) -> Result<CheckedTarget, SsrfError> {
    let port = url.port();
    match url.host() {
        url::Host::Ipv4(ip) => {
            check_ip(&ip.to_string(), IpAddr::V4(ip), policy)?;
            Ok(CheckedTarget { pinned: None })
        }
        url::Host::Ipv6(ip) => {
            check_ip(&ip.to_string(), IpAddr::V6(ip), policy)?;
            Ok(CheckedTarget { pinned: None })
        }
        url::Host::Domain(host) => {
            let lower = host.to_ascii_lowercase();
            if (lower == "metadata.google.internal" || lower == "metadata")
                && !policy.allow_link_local
            {
                let (class, what, flag) = Class::Metadata
                    .describe()
                    .unwrap_or(("metadata", "metadata", None));
                return Err(SsrfError::Forbidden {
                    host: host.to_owned(),
                    addr: IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
                    class,
                    what,
                    flag,
                });
            }
            let resolve_error = |reason: String| {
                tracing::info!(%host, %reason, "upstream host does not resolve");
                SsrfError::Resolve {
                    host: host.to_owned(),
                }
            };
            let addrs: Vec<SocketAddr> =
                match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
                    Err(_) => return Err(resolve_error(format!("timed out after {timeout:?}"))),
                    Ok(Err(e)) => return Err(resolve_error(e.to_string())),
                    Ok(Ok(a)) => a.collect(),
                };
            if addrs.is_empty() {
                return Err(resolve_error("no addresses".into()));
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
            ..SsrfPolicy::default()
        };
        let link_local = SsrfPolicy {
            allow_link_local: true,
            ..SsrfPolicy::default()
        };
        let no_private = SsrfPolicy {
            deny_private: true,
            ..SsrfPolicy::default()
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
            // ---- the gaps of issue 10 and what a reviewer adds to them ----
            (
                "ipv4-translated loopback",
                "http://[::ffff:0:127.0.0.1]/mcp",
                deny,
                false,
            ),
            (
                "ipv4-translated metadata allowed as link-local",
                "http://[::ffff:0:a9fe:a9fe]/",
                link_local,
                true,
            ),
            (
                "ipv4-translated metadata refused",
                "http://[::ffff:0:169.254.169.254]/",
                deny,
                false,
            ),
            ("this network 0/8", "http://0.1.2.3/mcp", loopback, false),
            (
                "this network via mapped",
                "http://[::ffff:0.0.0.7]/",
                loopback,
                false,
            ),
            ("v6 unspecified", "http://[::]/", loopback, false),
            ("azure wireserver", "http://168.63.129.16/", deny, false),
            (
                "azure wireserver allowed as metadata",
                "http://168.63.129.16/",
                link_local,
                true,
            ),
            ("oracle metadata", "http://192.0.0.192/", deny, false),
            (
                "ietf protocol space",
                "http://192.0.0.8/",
                link_local,
                false,
            ),
            ("alibaba metadata", "http://100.100.100.200/", deny, false),
            ("shared address space", "http://100.64.1.2/mcp", deny, true),
            (
                "shared address space denied with private",
                "http://100.127.255.254/mcp",
                no_private,
                false,
            ),
            (
                "ula allowed as private",
                "http://[fd12:3456::1]/",
                deny,
                true,
            ),
            (
                "ula denied with private",
                "http://[fc00::1]/",
                no_private,
                false,
            ),
            ("site-local", "http://[fec0::1]/", no_private, false),
            ("rfc1918 denied", "http://192.168.1.1/", no_private, false),
            ("rfc1918 172.16/12", "http://172.31.0.1/", no_private, false),
            ("172.32 is public", "http://172.32.0.1/", no_private, true),
            ("aws dns over v6", "http://[fd00:ec2::253]/", deny, false),
            ("aws imds over v6", "http://[fd00:ec2::254]/", deny, false),
            ("broadcast", "http://255.255.255.255/", link_local, false),
            ("multicast v4", "http://239.1.2.3/", link_local, false),
            ("multicast v6", "http://[ff02::1]/", link_local, false),
            ("class e", "http://240.1.2.3/", link_local, false),
            (
                "nat64 /96 of private, denied",
                "http://[64:ff9b::a00:1]/",
                no_private,
                false,
            ),
            (
                "local nat64 /64 position",
                "http://[64:ff9b:1:0:7f:0:1:0]/",
                deny,
                false,
            ),
            (
                "local nat64 /48 position",
                "http://[64:ff9b:1:7f00:0:100::]/",
                deny,
                false,
            ),
            (
                "isatap loopback",
                "http://[2001:db8::5efe:7f00:1]/",
                deny,
                false,
            ),
            (
                "isatap global-bit loopback",
                "http://[2001:db8::200:5efe:7f00:1]/",
                deny,
                false,
            ),
            (
                "teredo of a public client",
                "http://[2001:0:4136:e378:8000:63bf:a247:2ddd]/",
                deny,
                true,
            ),
        ];
        for (name, url, policy, ok) in cases {
            // What does not parse as an upstream URL never reaches the guard.
            let got = match UpstreamUrl::parse(url) {
                Ok(u) => check_upstream_url(&u, *policy, t)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_name_does_not_tell_where_it_resolves() {
        let e = check_upstream_url(
            &UpstreamUrl::parse("http://localhost:1/mcp").unwrap(),
            SsrfPolicy::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("loopback") && text.contains("refused"),
            "{text}"
        );
        assert!(
            !text.contains("127.0.0.1"),
            "the resolved address stays in the log: {text}"
        );
        let e = check_upstream_url(
            &UpstreamUrl::parse("http://no-such-host.invalid/mcp").unwrap(),
            SsrfPolicy::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "cannot resolve no-such-host.invalid");
    }
}
