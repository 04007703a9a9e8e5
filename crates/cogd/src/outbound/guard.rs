//! The address guard: which addresses the server's own requests may reach,
//! so that a request's URLs cannot turn the server against itself or its
//! network.
//!
//! A client built by [`super::OutboundClient`] resolves names with a
//! [`GuardedResolver`], which drops the addresses the [`AddressPolicy`]
//! refuses and hands the rest to the connector, so the address checked is
//! the address connected to (a name that resolves to a public address when
//! checked and to a private one when used cannot pass). An IP address in a
//! URL never reaches a resolver, so it is checked before the request is sent
//! ([`AddressPolicy::check_url`]) and before each redirect is followed
//! ([`redirect_policy`]).
//!
//! Always refused: the server's own listen address (any of its addresses,
//! loopback and unspecified included, on the port it listens on), so a
//! webhook or upload cannot call the server's own `/shutdown`. With
//! `COG_BLOCK_PRIVATE_NETWORKS=1`, also every loopback, private, link-local,
//! unique-local, shared or unspecified address and the server's own
//! addresses on any port; proxies from the environment are then not used, as
//! a proxy would resolve names where this check cannot see.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Redirects followed before a request fails.
const MAX_REDIRECTS: usize = 10;

/// Which addresses outbound requests may reach; cheap to clone.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    /// `COG_BLOCK_PRIVATE_NETWORKS`: refuse loopback, private and link-local
    /// addresses, and the server's own.
    pub(super) block_private: bool,
    /// The port the server listens on; `None` when it does not listen
    /// (`cogd predict`).
    pub(super) listen_port: Option<u16>,
    /// The addresses of this host's interfaces, read once at start.
    own: Arc<[IpAddr]>,
}

/// Why an address was refused: the error a resolver or a redirect gives, so
/// a caller can tell a refusal from a network failure ([`is_refused`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl AddressPolicy {
    /// A policy for a server listening on `listen_port`.
    pub fn new(block_private: bool, listen_port: Option<u16>) -> Self {
        Self {
            block_private,
            listen_port,
            own: interface_addresses().into(),
        }
    }

    /// Why `ip` may not be reached on `port`, if it may not. `port` is
    /// `None` where it is not known (a resolver sees names, not ports).
    fn refuses(&self, ip: IpAddr, port: Option<u16>) -> Option<&'static str> {
        let ip = ip.to_canonical();
        let own = ip.is_loopback() || ip.is_unspecified() || self.own.contains(&ip);
        if own && port.is_some() && port == self.listen_port {
            return Some("it is the server's own address");
        }
        if self.block_private && (own || is_private(ip)) {
            return Some(
                "it is a loopback, private or link-local address \
                 (COG_BLOCK_PRIVATE_NETWORKS is set)",
            );
        }
        None
    }

    /// Checks `url` before it is requested or a redirect to it followed, by
    /// a client whose resolver refuses the server's own addresses when
    /// `guards_self`. An IP host is checked here; a host name on the listen
    /// port only through such a client.
    pub(super) fn check_url(&self, url: &Url, guards_self: bool) -> Result<(), Refused> {
        let port = url.port_or_known_default();
        let refused = |why: &str| {
            let host = url.host_str().unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            Err(Refused(format!(
                "refused to connect to {host}{port}: {why}"
            )))
        };
        let Some(host) = url.host_str() else {
            return refused("the URL has no host");
        };
        // An IPv6 host comes in brackets.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.refuses(ip, port).map_or(Ok(()), refused),
            Err(_) if !guards_self && port == self.listen_port => {
                refused("a redirect to a host name on the server's own port could be the server")
            }
            Err(_) => Ok(()),
        }
    }
}

/// Loopback, private (RFC 1918), shared (RFC 6598), link-local, unique-local,
/// unspecified, broadcast or documentation-reserved: nothing a public service
/// lives at.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
        }
    }
}

/// The addresses of this host's network interfaces (empty if they cannot be
/// read: loopback and unspecified addresses are refused without them).
fn interface_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below, once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return found;
    }
    let mut at = head;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs made; `ifa_addr`,
        // when set, points at a sockaddr of the family it names.
        unsafe {
            let addr = (*at).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*addr.cast::<libc::sockaddr_in>();
                        found.push(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).into());
                    }
                    libc::AF_INET6 => {
                        let v6 = &*addr.cast::<libc::sockaddr_in6>();
                        found.push(Ipv6Addr::from(v6.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
            at = (*at).ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Resolves names and keeps only the addresses the policy allows, checked as
/// if on `port` (the listen port, for the client that guards it).
pub(super) struct GuardedResolver {
    policy: AddressPolicy,
    port: Option<u16>,
}

impl GuardedResolver {
    /// A resolver for a client of URLs on the listen port when
    /// `guards_self` (it refuses the server's own addresses), else for
    /// URLs on any other port.
    pub(super) fn new(policy: &AddressPolicy, guards_self: bool) -> Self {
        Self {
            policy: policy.clone(),
            port: if guards_self {
                policy.listen_port
            } else {
                None
            },
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let port = self.port;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = "it has no address";
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.refuses(addr.ip(), port) {
                    Some(reason) => {
                        why = reason;
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let refused = Refused(format!("refused to connect to {host}: {why}"));
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The redirect rules of a client: at most [`MAX_REDIRECTS`], each target
/// checked as [`AddressPolicy::check_url`] checks a request's URL.
pub(super) fn redirect_policy(
    policy: &AddressPolicy,
    guards_self: bool,
) -> reqwest::redirect::Policy {
    let policy = policy.clone();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(Refused(format!("more than {MAX_REDIRECTS} redirects")));
        }
        match policy.check_url(attempt.url(), guards_self) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// Whether `error` is an address the policy refused (not worth retrying).
pub fn is_refused(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<Refused>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(block_private: bool) -> AddressPolicy {
        AddressPolicy {
            block_private,
            listen_port: Some(5000),
            own: Arc::from(vec!["203.0.113.7".parse::<IpAddr>().unwrap()]),
        }
    }

    fn check(policy: &AddressPolicy, url: &str) -> bool {
        policy.check_url(&Url::parse(url).unwrap(), false).is_ok()
    }

    #[test]
    fn the_servers_own_listen_address_is_always_refused() {
        let open = policy(false);
        for url in [
            "http://127.0.0.1:5000/shutdown",
            "http://127.9.9.9:5000/",
            "http://0.0.0.0:5000/",
            "http://[::1]:5000/",
            "http://[::ffff:127.0.0.1]:5000/",
            "http://203.0.113.7:5000/",
            "http://example.com:5000/",
        ] {
            assert!(!check(&open, url), "{url}");
        }
        for url in [
            "http://127.0.0.1:5001/",
            "http://10.0.0.1:5000/",
            "http://example.com/",
        ] {
            assert!(check(&open, url), "{url}");
        }
    }

    #[test]
    fn private_networks_are_refused_when_asked() {
        let closed = policy(true);
        for url in [
            "http://127.0.0.1:80/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://203.0.113.7:8080/",
        ] {
            assert!(!check(&closed, url), "{url}");
        }
        for url in [
            "http://8.8.8.8/",
            "https://[2001:4860::8888]/",
            "https://example.com/",
        ] {
            assert!(check(&closed, url), "{url}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let resolver = GuardedResolver {
            policy: policy(true),
            port: None,
        };
        let name: Name = "localhost".parse().unwrap();
        let error = resolver.resolve(name).await.err().unwrap();
        assert!(
            error
                .to_string()
                .contains("refused to connect to localhost"),
            "{error}"
        );
        let open = GuardedResolver {
            policy: policy(false),
            port: Some(5000),
        };
        let name: Name = "localhost".parse().unwrap();
        assert!(
            open.resolve(name).await.is_err(),
            "localhost is the server on its port"
        );
        let any_port = GuardedResolver {
            policy: policy(false),
            port: None,
        };
        let name: Name = "localhost".parse().unwrap();
        assert!(any_port.resolve(name).await.is_ok());
    }
}
