//! The server under test: its URL, restricted to loopback, and how the bench
//! opens TCP connections to it (optionally from a chosen 127.0.0.x source).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Where the server listens, and what to put in requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// Socket address to connect to (always loopback).
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Path prefix before `/events` and `/channels` (no trailing slash).
    pub base_path: String,
}

impl Target {
    /// Parses one URL or several, comma-separated (replicas of one
    /// deployment): subscribers and publisher connections are spread over
    /// them round-robin.
    pub fn parse_all(urls: &str) -> anyhow::Result<Vec<Self>> {
        let targets = urls
            .split(',')
            .map(|u| Self::parse(u.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!targets.is_empty(), "--url names no server");
        Ok(targets)
    }

    /// Parses `http://HOST[:PORT][/prefix]`, refusing any host that is not
    /// 127.0.0.0/8, `localhost` or `::1`: the bench is a load generator and
    /// must not be pointed at someone else's server.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("--url must start with http:// (got {url:?})"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            anyhow::bail!("--url must not carry credentials");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("unclosed [ in --url"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => anyhow::bail!("bad port in --url"),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port: u16 = match port {
            Some(p) => p
                .parse()
                .map_err(|_| anyhow::anyhow!("bad port {p:?} in --url"))?,
            None => 80,
        };
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--url host {host:?} is not loopback (use 127.0.0.1, localhost or [::1])"
                )
            })?
        };
        let loopback = match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
        };
        if !loopback {
            anyhow::bail!(
                "--url host {ip} is not loopback: herald-bench only targets 127.0.0.0/8, localhost or ::1"
            );
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// Opens a TCP connection, bound first to `source` when given (so that
    /// each source address gets its own ~28k ephemeral ports).
    pub async fn connect(&self, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
        let stream = match (source, self.addr) {
            (Some(src), SocketAddr::V4(_)) => {
                let sock = TcpSocket::new_v4()?;
                sock.set_reuseaddr(true)?;
                sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
                sock.connect(self.addr).await?
            }
            _ => TcpStream::connect(self.addr).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// The source address of subscriber `i` when spreading over `count`
/// addresses 127.0.0.2 ..= 127.0.0.(count+1); `None` when not spreading.
pub fn source_ip(i: usize, count: usize) -> Option<Ipv4Addr> {
    if count == 0 {
        return None;
    }
    let n = 2 + (i % count) as u32;
    Some(Ipv4Addr::from(0x7f00_0000 | n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_replicas_and_loopback_each() {
        let t =
            Target::parse_all("http://127.0.0.1:8001, http://127.0.0.1:8002/base").expect("two");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].addr.port(), 8002);
        assert_eq!(t[1].base_path, "/base");
        assert!(Target::parse_all("http://127.0.0.1:8001,http://example.com").is_err());
    }

    #[test]
    fn loopback_only() {
        let t = Target::parse("http://127.0.0.1:18000").unwrap();
        assert_eq!(t.addr, "127.0.0.1:18000".parse().unwrap());
        assert_eq!(t.base_path, "");
        let t = Target::parse("http://localhost:8000/herald/").unwrap();
        assert_eq!(t.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(t.base_path, "/herald");
        assert_eq!(t.host, "localhost:8000");
        assert!(Target::parse("http://127.9.9.9").is_ok());
        assert!(Target::parse("http://[::1]:9000").is_ok());
        for bad in [
            "http://10.0.0.1:80",
            "http://example.com",
            "http://0.0.0.0:8000",
            "http://[::2]:80",
            "https://127.0.0.1",
            "http://u:p@127.0.0.1",
            "127.0.0.1:8000",
            "http://128.0.0.1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn source_ips_spread() {
        assert_eq!(source_ip(5, 0), None);
        assert_eq!(source_ip(0, 3), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(2, 3), Some(Ipv4Addr::new(127, 0, 0, 4)));
        assert_eq!(source_ip(3, 3), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(299, 300), Some(Ipv4Addr::new(127, 0, 1, 45)));
    }
}
