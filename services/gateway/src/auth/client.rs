//! The client address the throttles and rate limits are keyed on: the TCP
//! peer, or, when the peer is a configured trusted proxy, the right-most
//! `X-Forwarded-For` hop that is not itself a trusted proxy (everything left
//! of it was written by the client and proves nothing). IPv6 addresses are
//! keyed per /64, the block one subscriber typically gets.

use std::net::{IpAddr, Ipv6Addr};

use actix_web::HttpRequest;

/// An address or a CIDR block (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    address: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (address, prefix) = match raw.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (raw.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|e| format!("{e}"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|e| format!("prefix: {e}"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("prefix longer than {max}"));
        }
        Ok(Self { address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, canonical(ip)) {
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

/// Resolves client addresses; built once from `rate_limit.trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct ClientAddresses {
    trusted: Vec<IpNet>,
}

impl ClientAddresses {
    pub fn new(trusted: &[String]) -> anyhow::Result<Self> {
        let trusted = trusted
            .iter()
            .map(|t| IpNet::parse(t).map_err(|e| anyhow::anyhow!("trusted proxy {t:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { trusted })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The key of the request's client (see the module doc).
    pub fn of(&self, req: &HttpRequest) -> IpAddr {
        let peer = req
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        key(self.resolve(peer, &forwarded))
    }

    fn resolve(&self, peer: IpAddr, forwarded: &[&str]) -> IpAddr {
        let mut client = peer;
        // Walk right to left while the hop that wrote the entry is trusted.
        for hop in forwarded.iter().rev() {
            if !self.is_trusted(client) {
                break;
            }
            match parse_hop(hop) {
                Some(ip) => client = ip,
                // Garbage: the trusted proxy itself is the best we know.
                None => break,
            }
        }
        client
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// IPv4 as is, IPv6 per /64.
fn key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let none = ClientAddresses::new(&[]).unwrap();
        assert_eq!(none.resolve(ip("10.0.0.1"), &["1.2.3.4"]), ip("10.0.0.1"));
        let lb = ClientAddresses::new(&["10.0.0.0/8".into()]).unwrap();
        assert_eq!(lb.resolve(ip("10.0.0.1"), &["1.2.3.4"]), ip("1.2.3.4"));
        // The client's own spoofed entries (left) are not taken.
        assert_eq!(
            lb.resolve(ip("10.0.0.1"), &["6.6.6.6", "1.2.3.4", "10.0.0.9"]),
            ip("1.2.3.4")
        );
        assert_eq!(lb.resolve(ip("10.0.0.1"), &["junk"]), ip("10.0.0.1"));
        assert_eq!(lb.resolve(ip("9.9.9.9"), &["1.2.3.4"]), ip("9.9.9.9"));
        assert_eq!(lb.resolve(ip("10.0.0.1"), &[]), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_is_keyed_per_64_and_nets_parse() {
        assert_eq!(key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert!(IpNet::parse("::1").unwrap().contains(ip("::1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!IpNet::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
    }
}
