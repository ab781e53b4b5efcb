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

/// The host name of an address (reverse DNS), for the `{rdns}` CSR word.
pub fn reverse_lookup(address: &str) -> Option<String> {
    let ip: IpAddr = address.parse().ok()?;
    let socket = std::net::SocketAddr::new(ip, 0);
    let (storage, length) = socket_address(&socket);
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: storage holds a valid sockaddr of `length` bytes; host is a writable buffer of the
    // size we pass; getnameinfo writes a NUL-terminated string into it on success.
    let rc = unsafe {
        libc::getnameinfo(
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            length,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo succeeded, so host is NUL-terminated within its length.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    name.to_str().ok().map(String::from)
}

fn socket_address(address: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match address {
        std::net::SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned for it.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned for it.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
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

    #[test]
    fn loopback_has_a_name() {
        assert!(reverse_lookup("127.0.0.1").is_some());
        assert_eq!(reverse_lookup("not an address"), None);
    }
}
