//! IP networks in configuration and scripts: whether an address lies in a network given as
//! text (`192.0.2.0/24`, `2001:db8::/32`, or one address).

use std::net::IpAddr;

/// Whether `ip` lies in `net` ("192.0.2.0/24", "2001:db8::/32" or a single address).
pub fn ip_in_net(ip: IpAddr, net: &str) -> Result<bool, String> {
    let (addr, len) = match net.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (net, None),
    };
    let base: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("ip_in: {net:?} is not an address or network"))?;
    let bits = if base.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        Some(l) => l
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= bits)
            .ok_or_else(|| format!("ip_in: bad prefix length in {net:?}"))?,
        None => bits,
    };
    let ip = match (ip, base) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return Ok(false),
        },
        _ => ip,
    };
    Ok(match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    })
}
