//! Addresses and address ranges (for the list of trusted reverse proxies).

use std::net::IpAddr;

/// One address or CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, normalize(address)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as the IPv4 address it is.
pub fn normalize(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

/// Parses `10.0.0.2, 192.168.0.0/16, ::1` (comma or white space separated).
pub fn parse_ranges(text: &str) -> Result<Vec<IpRange>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (address, prefix) = match part.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (part, None),
            };
            let network: IpAddr = address.parse().map_err(|_| format!("'{part}' is not an address"))?;
            let network = normalize(network);
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("'{part}' has a bad prefix"))?,
                None => max,
            };
            Ok(IpRange { network, prefix })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match() {
        let ranges = parse_ranges("10.0.0.2, 192.168.0.0/16 fd00::/8").unwrap();
        let hit = |a: &str| ranges.iter().any(|r| r.contains(a.parse().unwrap()));
        assert!(hit("10.0.0.2"));
        assert!(!hit("10.0.0.3"));
        assert!(hit("192.168.178.1"));
        assert!(hit("::ffff:10.0.0.2"));
        assert!(hit("fd12::1"));
        assert!(!hit("fe80::1"));
        assert!(parse_ranges("10.0.0.0/33").is_err());
        assert!(parse_ranges("nonsense").is_err());
        assert!(parse_ranges("").unwrap().is_empty());
    }
}
