//! The client IP of a request: the socket peer, or, when the peer is a trusted proxy, the
//! address that proxy (and any trusted proxy before it) says it forwarded for.
//!
//! Used by the rate limiter (`ip` keys, `exempt_cidrs`) and by the audit record; the result is
//! kept in `Ctx::client_ip`.
//!
//! Exactly one header is read: `rate_limit.client_ip_header` (default `x-forwarded-for`; the
//! edge proxy must overwrite or append to it). Any other forwarding header the client sends
//! (`Forwarded`, `X-Real-IP`, ...) is ignored, so a client cannot pick the header that wins.
//! The header is read right to left: each hop appends the address it received the request
//! from, so the rightmost entries were written by our own proxies and the first entry that is
//! not a trusted proxy is the client. Entries left of it were written by the client and are
//! never believed. With `client_ip_header = "forwarded"` the `for=` parameters of RFC 7239 are
//! read the same way. An entry that is not an address (`unknown`, an obfuscated `_id`) stops
//! the walk at the last address known for sure.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use super::config::{in_any, Cidr};

/// Whether the socket `peer` is one of the `trusted` proxies.
pub fn peer_trusted(peer: Option<IpAddr>, trusted: &[Cidr]) -> bool {
    peer.is_some_and(|p| in_any(trusted, p.to_canonical()))
}

/// Resolves the client IP from the socket `peer` and the one forwarding header `header`,
/// believing it only as far as the hops are in `trusted` (see the module doc).
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[Cidr],
    header: &http::HeaderName,
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if trusted.is_empty() || !in_any(trusted, peer) {
        return Some(peer);
    }
    let hops = forwarded_hops(headers, header);
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = ip.to_canonical();
                if !in_any(trusted, client) {
                    break;
                }
            }
            None => break,
        }
    }
    Some(client)
}

/// The entries of `header` (the `for=` addresses when it is `Forwarded`), left to right over
/// all header lines; `None` for an entry that is not an address.
fn forwarded_hops(headers: &HeaderMap, header: &http::HeaderName) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    if header == http::header::FORWARDED {
        for line in headers.get_all(header) {
            let Ok(line) = line.to_str() else {
                hops.push(None);
                continue;
            };
            for element in line.split(',') {
                let value = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                });
                // Elements without `for=` say nothing about who connected.
                if let Some(v) = value {
                    hops.push(parse_node(v.trim_matches('"')));
                }
            }
        }
        return hops;
    }
    for line in headers.get_all(header) {
        let Ok(line) = line.to_str() else {
            hops.push(None);
            continue;
        };
        for entry in line.split(',') {
            hops.push(parse_node(entry.trim()));
        }
    }
    hops
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]`, `[2001:db8::1]:5678` or a bare IPv6 address.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

    #[test]
    fn untrusted_peer_is_the_client() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = headers(&[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &trusted, &XFF),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &[], &XFF),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(None, &h, &trusted, &XFF), None);
    }

    #[test]
    fn trusted_chain_is_walked_right_to_left() {
        let trusted = [
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("127.0.0.1").unwrap(),
        ];
        // The client forged the first entry; the edge proxy 10.0.0.2 appended the real client.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &XFF),
            ip("198.51.100.7")
        );
        // Split across header lines.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            client_ip(ip("10.1.1.1"), &h, &trusted, &XFF),
            ip("198.51.100.7")
        );
        // Only trusted hops: the leftmost one.
        let h = headers(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &XFF),
            ip("10.0.0.3")
        );
        // No header: the peer.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted, &XFF),
            ip("127.0.0.1")
        );
        // Garbage stops the walk at the last known address.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, garbage, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &XFF),
            ip("10.0.0.2")
        );
        // IPv4-mapped peer.
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted, &XFF),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let trusted = [Cidr::parse("127.0.0.0/8").unwrap()];
        // A client-sent `Forwarded` does not beat the edge proxy's X-Forwarded-For.
        let h = headers(&[
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-for", "192.0.2.1"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &XFF),
            ip("192.0.2.1")
        );
        let h = headers(&[("forwarded", "for=198.51.100.9")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &XFF),
            ip("127.0.0.1")
        );
        // `Forwarded` when configured, read right to left too.
        let fwd = http::header::FORWARDED;
        let h = headers(&[
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https",
            ),
            ("x-forwarded-for", "192.0.2.1"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &fwd),
            ip("2001:db8::7")
        );
        let h = headers(&[("forwarded", "for=192.0.2.60:8080;by=203.0.113.43")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &fwd),
            ip("192.0.2.60")
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, &fwd),
            ip("127.0.0.1")
        );
    }
}
