//! Who the sender is, from its verified certificate, and whether the route admits it.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::config::ClientMatcher;

/// The identities a client certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject common names.
    pub cn: Vec<String>,
    /// DNS subject alternative names (lower-case).
    pub dns: Vec<String>,
    /// URI subject alternative names.
    pub uri: Vec<String>,
    /// e-mail (RFC 822) subject alternative names.
    pub email: Vec<String>,
    /// The subject's distinguished name, for the audit trail.
    pub subject: String,
    /// The serial number, hex.
    pub serial: String,
    /// The issuer's distinguished name.
    pub issuer: String,
}

/// A route's `allowed_clients`.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    matchers: Vec<ClientMatcher>,
}

impl ClientIdentity {
    /// Reads the identities of a DER certificate (already verified by rustls).
    pub fn from_der(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let mut id = ClientIdentity {
            cn: cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_string))
                .collect(),
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string(),
            issuer: cert.issuer().to_string(),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => id.dns.push(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => id.uri.push((*u).to_string()),
                    GeneralName::RFC822Name(e) => id.email.push((*e).to_string()),
                    _ => {}
                }
            }
        }
        Some(id)
    }
}

impl ClientIdentity {
    /// Every identity `allowed_clients` can match, in its own notation
    /// (`cn:…,dns:…,uri:…,email:…`), for the refusal's audit record and `check`.
    pub fn names(&self) -> String {
        let kinds = [
            ("cn", &self.cn),
            ("dns", &self.dns),
            ("uri", &self.uri),
            ("email", &self.email),
        ];
        let all: Vec<String> = kinds
            .iter()
            .flat_map(|(k, names)| names.iter().map(move |n| format!("{k}:{n}")))
            .collect();
        all.join(",")
    }
}

impl fmt::Display for ClientIdentity {
    /// The most specific identity, for logs: a URI SAN, else a DNS SAN, else e-mail, else CN.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = self.uri.first() {
            write!(f, "uri:{u}")
        } else if let Some(d) = self.dns.first() {
            write!(f, "dns:{d}")
        } else if let Some(e) = self.email.first() {
            write!(f, "email:{e}")
        } else if let Some(c) = self.cn.first() {
            write!(f, "cn:{c}")
        } else {
            f.write_str("anonymous")
        }
    }
}

impl AllowList {
    /// The allow-list of a route; empty admits every verified client.
    pub fn new(matchers: Vec<ClientMatcher>) -> Self {
        Self { matchers }
    }

    /// Whether `id` matches any entry (or the list is empty).
    pub fn admits(&self, id: &ClientIdentity) -> bool {
        self.matchers.is_empty() || self.matchers.iter().any(|m| matches(m, id))
    }
}

fn matches(m: &ClientMatcher, id: &ClientIdentity) -> bool {
    match m {
        ClientMatcher::Cn(want) => id.cn.iter().any(|c| c == want),
        ClientMatcher::Uri(want) => id.uri.iter().any(|u| u == want),
        ClientMatcher::Email(want) => id.email.iter().any(|e| e.eq_ignore_ascii_case(want)),
        ClientMatcher::Dns(want) => id.dns.iter().any(|d| dns_matches(want, d)),
    }
}

/// `*.example.org` matches exactly one leading label (`a.example.org`, not `a.b.example.org`).
fn dns_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_covers_one_label_only() {
        assert!(dns_matches("*.lab.example.org", "a.lab.example.org"));
        assert!(!dns_matches("*.lab.example.org", "a.b.lab.example.org"));
        assert!(!dns_matches("*.lab.example.org", "lab.example.org"));
        assert!(dns_matches("lab.example.org", "lab.example.org"));
    }

    #[test]
    fn allow_list_matches_each_kind() {
        let id = ClientIdentity {
            cn: vec!["lab-sender".into()],
            dns: vec!["lab.example.org".into()],
            uri: vec!["spiffe://h/lab".into()],
            email: vec!["Lab@Example.org".into()],
            ..Default::default()
        };
        for m in [
            ClientMatcher::Cn("lab-sender".into()),
            ClientMatcher::Dns("lab.example.org".into()),
            ClientMatcher::Uri("spiffe://h/lab".into()),
            ClientMatcher::Email("lab@example.org".into()),
        ] {
            assert!(AllowList::new(vec![m.clone()]).admits(&id), "{m}");
        }
        assert!(!AllowList::new(vec![ClientMatcher::Cn("other".into())]).admits(&id));
        assert!(AllowList::default().admits(&ClientIdentity::default()));
        assert_eq!(id.to_string(), "uri:spiffe://h/lab");
    }
}
