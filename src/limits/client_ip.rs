//! Who the client is: the socket peer, or the address a trusted proxy
//! names in `X-Forwarded-For`; and the bucket limits are keyed on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// The address limits are keyed on: IPv4 as is, IPv4-mapped IPv6 as IPv4,
/// other IPv6 reduced to its /64 prefix.
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// An IP network in CIDR notation, e.g. `10.0.0.0/8`; a bare address is a
/// single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// True when `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a `trusted_proxies` entry does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNet {
    /// Not an IP address or CIDR block.
    #[error("{0:?} is not an IP address or CIDR block")]
    NotAnAddress(String),
    /// The prefix length is not a number within the address size.
    #[error("{0:?} has a bad prefix length")]
    BadPrefix(String),
}

impl FromStr for IpNet {
    type Err = InvalidNet;

    fn from_str(s: &str) -> Result<Self, InvalidNet> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr = IpAddr::from_str(addr)
            .map_err(|_| InvalidNet::NotAnAddress(s.to_string()))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| InvalidNet::BadPrefix(s.to_string()))?,
        };
        Ok(Self { addr, prefix })
    }
}

/// The client's IP: the socket peer, unless the peer is a trusted proxy.
/// Then `X-Forwarded-For` is read from the right (the entry closest to us),
/// skipping trusted proxies, and the first untrusted address is the client.
/// If every entry is trusted, the left-most one is used; if an entry cannot
/// be parsed, the last trusted hop before it is used, so a forged header can
/// never name an arbitrary address.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut client = peer.ip().to_canonical();
    if !is_trusted(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        if !is_trusted(ip) {
            return ip;
        }
        client = ip;
    }
    client
}

/// Parses one `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `::1` or `[::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    IpAddr::from_str(hop)
        .ok()
        .or_else(|| SocketAddr::from_str(hop).ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net: IpNet = "10.0.0.0/8".parse().expect("cidr");
        assert!(net.contains(ip("10.255.1.2")));
        assert!(net.contains(ip("::ffff:10.1.1.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::1")));
        let host: IpNet = "192.0.2.7".parse().expect("host");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6: IpNet = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let xff = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_str(v).expect("ascii"));
            h
        };
        let proxy: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        let stranger: SocketAddr = "203.0.113.9:5000".parse().expect("addr");

        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(stranger, &xff("1.1.1.1"), &trusted),
            ip("203.0.113.9")
        );
        // From a proxy: the right-most untrusted entry, not the spoofable left one.
        assert_eq!(
            client_ip(proxy, &xff("6.6.6.6, 198.51.100.4, 10.0.0.2"), &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(proxy, &xff("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.4:80"), &trusted),
            ip("198.51.100.4")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.4, junk, 10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
        // All trusted: the left-most.
        assert_eq!(
            client_ip(proxy, &xff("10.1.1.1, 10.0.0.2"), &trusted),
            ip("10.1.1.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Several header lines read as one list.
        let mut two = xff("198.51.100.4");
        two.append("x-forwarded-for", HeaderValue::from_static("10.0.0.3"));
        assert_eq!(client_ip(proxy, &two, &trusted), ip("198.51.100.4"));
        // No proxies configured: always the peer; mapped v4 peers are canonical.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:80".parse().expect("addr");
        assert_eq!(client_ip(mapped, &xff("1.1.1.1"), &[]), ip("192.0.2.1"));
    }

    #[test]
    fn ip_buckets() {
        assert_eq!(ip_bucket(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(ip_bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(ip_bucket(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }
}
