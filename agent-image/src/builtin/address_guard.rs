//! Which addresses the `http` and `notify` built-ins may reach: not the cloud's metadata
//! service or anything else link-local, and not the cluster's API server, unless the step's
//! input `allowRestrictedAddresses` says so. A step's URL usually comes from an author, but a
//! param or a redirect can steer it; the pod's own credentials (a node role, a service
//! account token) must not be one request away.
//!
//! Host names are resolved and every address checked, at each connection (redirects
//! included), by a DNS resolver the client uses; IP literals in a URL never reach a
//! resolver, so they are checked on the URL itself, before the request and at each redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::Inputs;

/// The input that lifts the guard, for the steps that must talk to these addresses.
pub const ALLOW_INPUT: &str = "allowRestrictedAddresses";

/// The variable Kubernetes sets in every pod to the API service's address.
const API_SERVICE_HOST_VAR: &str = "KUBERNETES_SERVICE_HOST";

/// AWS's IPv6 metadata address (Nitro instances).
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// What the guard refuses, read once per step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressGuard {
    /// `false` when the step allows restricted addresses: nothing is refused.
    pub enforced: bool,
    /// The cluster's API service address, if the pod knows it.
    pub api_service: Option<IpAddr>,
}

impl AddressGuard {
    /// The guard for a step: its `allowRestrictedAddresses` input, and the API service address
    /// from `lookup` (the environment).
    pub fn for_step(
        inputs: &Inputs,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let allowed = match inputs.get(ALLOW_INPUT) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(allowed)) => *allowed,
            Some(serde_json::Value::String(text)) if text == "true" || text == "false" => {
                text == "true"
            }
            Some(_) => return Err(format!("input {ALLOW_INPUT:?} must be true or false")),
        };
        Ok(Self {
            enforced: !allowed,
            api_service: lookup(API_SERVICE_HOST_VAR)
                .and_then(|host| host.trim().trim_matches(['[', ']']).parse().ok()),
        })
    }

    /// Why `address` may not be reached, if it may not.
    pub fn refusal_for_address(&self, address: IpAddr) -> Option<String> {
        if !self.enforced {
            return None;
        }
        let address = unmapped(address);
        let what = if self.api_service.map(unmapped) == Some(address) {
            "the cluster's API server"
        } else if is_link_local_or_metadata(address) {
            "a link-local or cloud metadata address"
        } else {
            return None;
        };
        Some(format!(
            "{address} is {what}; set input {ALLOW_INPUT:?} to true if the step must reach it"
        ))
    }

    /// Why the host of `url` may not be reached, judged on the URL alone: an IP literal, or a
    /// name of the cluster's API service. Other names are checked when they are resolved.
    pub fn refusal_for_url(&self, url: &Url) -> Option<String> {
        if !self.enforced {
            return None;
        }
        // IPv6 literals come bracketed.
        let host = url.host_str()?;
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(address) => self.refusal_for_address(address),
            Err(_) => self.refusal_for_name(host),
        }
    }

    /// Why the host name `name` may not be reached without resolving it.
    fn refusal_for_name(&self, name: &str) -> Option<String> {
        if !self.enforced {
            return None;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let is_api_name = name == "kubernetes"
            || name == "kubernetes.default"
            || name.starts_with("kubernetes.default.svc");
        is_api_name.then(|| {
            format!(
                "{name} is the cluster's API server; set input {ALLOW_INPUT:?} to true if the \
                 step must reach it"
            )
        })
    }

    /// The redirect policy of a guarded client: reqwest's default limit of 10, and each
    /// target's URL checked like the first one.
    pub fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let guard = Arc::clone(self);
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match guard.refusal_for_url(attempt.url()) {
                Some(refusal) => attempt.error(format!("redirect refused: {refusal}")),
                None => attempt.follow(),
            }
        })
    }
}

/// The address an IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) stands for; others
/// as they are.
fn unmapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// 169.254.0.0/16 (where every cloud's metadata service lives), fe80::/10, and AWS's IPv6
/// metadata address; IPv4-mapped forms of the IPv4 ones too.
pub fn is_link_local_or_metadata(address: IpAddr) -> bool {
    match unmapped(address) {
        IpAddr::V4(v4) => is_link_local_v4(v4),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == EC2_METADATA_V6,
    }
}

fn is_link_local_v4(address: Ipv4Addr) -> bool {
    address.octets()[..2] == [169, 254]
}

/// Resolves names as the system does, then refuses the name when any of its addresses is
/// refused (rather than dropping those: a name that resolves to the metadata service is a
/// trap, not a fallback).
#[derive(Debug)]
pub struct GuardedResolver {
    pub guard: Arc<AddressGuard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            if let Some(refusal) = guard.refusal_for_name(&host) {
                return Err(refusal.into());
            }
            // Port 0: reqwest sets the real one.
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(refusal) = addresses
                .iter()
                .find_map(|address| guard.refusal_for_address(address.ip()))
            {
                return Err(format!("{host} resolves to a refused address: {refusal}").into());
            }
            let addrs: Addrs = Box::new(addresses.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_support::inputs;
    use serde_json::json;

    fn enforced_guard() -> AddressGuard {
        AddressGuard {
            enforced: true,
            api_service: Some(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))),
        }
    }

    #[test]
    fn link_local_and_metadata_addresses_are_classified() -> anyhow::Result<()> {
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "169.254.255.255",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_link_local_or_metadata(refused.parse()?), "{refused}");
        }
        for allowed in [
            "169.253.255.255",
            "169.255.0.1",
            "10.0.0.1",
            "127.0.0.1",
            "8.8.8.8",
            "fd00:ec2::253",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_link_local_or_metadata(allowed.parse()?), "{allowed}");
        }
        Ok(())
    }

    #[test]
    fn the_api_service_is_refused_in_every_spelling() -> anyhow::Result<()> {
        let guard = enforced_guard();
        for url in [
            "https://10.96.0.1/api",
            "https://[::ffff:10.96.0.1]/api",
            "https://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/",
            "https://kubernetes.default.svc/api",
            "https://kubernetes.default.svc.cluster.local./api",
            "https://KUBERNETES.default/api",
        ] {
            let refusal = guard.refusal_for_url(&Url::parse(url)?);
            assert!(
                refusal
                    .as_deref()
                    .is_some_and(|text| text.contains(r#"input "allowRestrictedAddresses""#)),
                "{url}: {refusal:?}"
            );
        }
        for url in [
            "https://10.96.0.2/",
            "https://example.com/",
            "http://127.0.0.1:8080/",
        ] {
            assert_eq!(guard.refusal_for_url(&Url::parse(url)?), None, "{url}");
        }
        Ok(())
    }

    #[test]
    fn the_input_lifts_the_guard() -> anyhow::Result<()> {
        let api = |name: &str| (name == API_SERVICE_HOST_VAR).then(|| "10.96.0.1".to_owned());
        let default =
            AddressGuard::for_step(&inputs(json!({})), api).map_err(anyhow::Error::msg)?;
        assert_eq!(default, enforced_guard());
        for allowed in [json!(true), json!("true")] {
            let guard = AddressGuard::for_step(&inputs(json!({ALLOW_INPUT: allowed})), api)
                .map_err(anyhow::Error::msg)?;
            assert!(!guard.enforced);
            assert_eq!(
                guard.refusal_for_url(&Url::parse("http://169.254.169.254/")?),
                None
            );
        }
        assert_eq!(
            AddressGuard::for_step(&inputs(json!({ALLOW_INPUT: "yes"})), api).err(),
            Some(r#"input "allowRestrictedAddresses" must be true or false"#.to_owned())
        );
        Ok(())
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused() {
        // `localhost` resolves without a network; the guard here treats loopback as the API
        // service, standing in for a name that points at a refused address.
        let guard = Arc::new(AddressGuard {
            enforced: true,
            api_service: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        });
        let resolver = GuardedResolver { guard };
        let name: Name = "localhost".parse().expect("a valid name");
        let error = resolver
            .resolve(name)
            .await
            .err()
            .map(|error| error.to_string());
        assert!(
            error.as_deref().is_some_and(|text| text.starts_with(
                "localhost resolves to a refused address: 127.0.0.1 is the cluster's API server"
            )),
            "{error:?}"
        );
    }
}
