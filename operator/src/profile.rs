//! The Postfix profile: the main.cf parameters and master.cf settings that wire an unmodified
//! Postfix to the agent (docs/ARCHITECTURE.md). One source of truth: the operator renders it into the
//! `<server>-postfix` ConfigMap and `virtmail-operator postfix-profile` prints it for reviewers and
//! for tests that run Postfix outside a cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use virtmail_crds::contract::SocketmapMap;

/// Postfix's default `message_size_limit`.
pub const DEFAULT_MESSAGE_SIZE_LIMIT: u64 = 10_240_000;

/// Parameters the profile sets itself; a MailServer's extra parameters cannot override them:
/// those that wire Postfix to the agent (the agent and Postfix would disagree about addresses or
/// lose mail) and those set from MailServer fields (`postfix.tls`, `postfix.proxyProtocol`).
/// The MailServer CRD refuses the same names at admission.
pub const PROTECTED: &[&str] = &[
    "virtual_transport",
    "virtual_mailbox_domains",
    "virtual_mailbox_maps",
    "virtual_alias_maps",
    "virtual_alias_domains",
    "recipient_delimiter",
    "lmtp_line_length_limit",
    "lmtp_destination_recipient_limit",
    "mydestination",
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_upstream_proxy_protocol",
];

/// master.cf services that Debian's package runs chrooted. The agent's sockets are absolute
/// paths outside the queue directory, so every service that talks to them runs unchrooted.
pub const UNCHROOTED_SERVICES: &[&str] = &[
    "smtp/inet",
    "pickup/unix",
    "cleanup/unix",
    "tlsmgr/unix",
    "rewrite/unix",
    "bounce/unix",
    "defer/unix",
    "trace/unix",
    "verify/unix",
    "flush/unix",
    "smtp/unix",
    "relay/unix",
    "showq/unix",
    "error/unix",
    "retry/unix",
    "discard/unix",
    "lmtp/unix",
    "anvil/unix",
    "scache/unix",
];

/// What the profile depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInput {
    /// Agent LMTP socket (absolute path).
    pub lmtp_socket: String,
    /// Agent socketmap socket (absolute path).
    pub socketmap_socket: String,
    /// MailServer `mailboxSizeLimit` (0 = none).
    pub mailbox_size_limit: u64,
    /// MailServer `recipientDelimiter`.
    pub recipient_delimiter: String,
    /// MailServer `postfix.parameters`.
    pub extra: BTreeMap<String, String>,
    /// Directory holding `tls.crt` and `tls.key` (MailServer `postfix.tls`); `None`: no TLS.
    pub tls_dir: Option<String>,
    /// Port of an extra SMTP listener that expects HAProxy's PROXY protocol
    /// (MailServer `postfix.proxyProtocol`).
    pub proxy_protocol_port: Option<u16>,
    /// MailServer `outbound.relayHost`: where mail the server sends itself (automatic replies)
    /// goes. `None`: nothing leaves, and parameters that send mail anywhere but the agent are
    /// refused.
    pub relay_host: Option<String>,
}

/// Parameters that send mail somewhere other than the agent (or copy it there). Refused unless
/// the MailServer declares outbound mail: a mailbox host must not become a relay by accident.
pub const OUTBOUND: &[&str] = &[
    "relayhost",
    "default_transport",
    "relay_transport",
    "transport_maps",
    "relay_domains",
    "sender_dependent_relayhost_maps",
    "sender_dependent_default_transport_maps",
    "smtp_fallback_relay",
    "fallback_transport",
    "content_filter",
    "always_bcc",
    "sender_bcc_maps",
    "recipient_bcc_maps",
];

/// Why an extra parameter would open the server to relaying, if it would.
pub fn relay_refusal(name: &str, value: &str, allow_outbound: bool) -> Option<String> {
    let tokens = || {
        value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
    };
    match name {
        "mynetworks" => tokens()
            .find(|t| !(t.starts_with("127.") || t.starts_with("[::1]")))
            .map(|t| {
                format!(
                    "mynetworks: {t} is not loopback; other hosts would relay through this server"
                )
            }),
        "mynetworks_style" if value.trim() != "host" => {
            Some("mynetworks_style: only host; other hosts would relay through this server".into())
        }
        "smtpd_relay_restrictions" => {
            let stop = tokens().position(|t| {
                matches!(
                    t,
                    "reject_unauth_destination" | "defer_unauth_destination" | "reject" | "defer"
                )
            });
            let open = tokens().position(|t| t == "permit");
            match (stop, open) {
                (Some(stop), open) if open.is_none_or(|o| o > stop) => None,
                _ => Some(
                    "smtpd_relay_restrictions: must reach reject_unauth_destination before any permit"
                        .into(),
                ),
            }
        }
        _ if OUTBOUND.contains(&name) && !allow_outbound => Some(format!(
            "{name}: sends mail elsewhere than this server's mailboxes, and the MailServer declares no outbound mail"
        )),
        _ => None,
    }
}

/// The rendered profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// main.cf parameters, in order (`postconf -e name=value`).
    pub main: Vec<(String, String)>,
    /// master.cf field settings (`postconf -F 'service/type/field = value'`).
    pub master: Vec<String>,
    /// master.cf services added (`postconf -M 'service/type = entry'`).
    pub services: Vec<String>,
    /// Extra parameters that were refused, with why.
    pub refused: Vec<String>,
}

/// `message_size_limit` for a mailbox size limit: Postfix's default, never above the mailbox
/// limit (a message larger than an mbox may grow could never be delivered).
pub fn message_size_limit(mailbox_size_limit: u64) -> u64 {
    match mailbox_size_limit {
        0 => DEFAULT_MESSAGE_SIZE_LIMIT,
        limit => limit.min(DEFAULT_MESSAGE_SIZE_LIMIT),
    }
}

/// Build the profile.
pub fn profile(input: &ProfileInput) -> Profile {
    let socketmap = |map: SocketmapMap| {
        (
            map.postfix_parameter(),
            map.postfix_reference(&input.socketmap_socket),
        )
    };
    let mut main: Vec<(String, String)> = [
        // Postfix delivers nothing locally: every served domain goes to the agent.
        ("mydestination", String::new()),
        socketmap(SocketmapMap::Domain),
        socketmap(SocketmapMap::Mailbox),
        socketmap(SocketmapMap::Alias),
        // Otherwise it defaults to $virtual_alias_maps and Postfix asks the alias map for bare
        // domain names.
        ("virtual_alias_domains", String::new()),
        (
            "virtual_transport",
            format!("lmtp:unix:{}", input.lmtp_socket),
        ),
        ("recipient_delimiter", input.recipient_delimiter.clone()),
        // lmtp(8) would split lines over 998 characters; virtual(8) keeps them whole.
        ("lmtp_line_length_limit", "0".into()),
        // One recipient per LMTP transaction, so lmtp(8) can prepend X-Original-To (master.cf
        // flags=O): the address before alias expansion, as virtual(8) writes it.
        ("lmtp_destination_recipient_limit", "1".into()),
        (
            "message_size_limit",
            message_size_limit(input.mailbox_size_limit).to_string(),
        ),
        ("smtpd_reject_unlisted_recipient", "yes".into()),
        (
            "smtpd_relay_restrictions",
            "permit_mynetworks, reject_unauth_destination".into(),
        ),
        ("mynetworks_style", "host".into()),
        // virtmail hosts mailboxes; it relays nothing unless the administrator says so.
        (
            "default_transport",
            "error:5.7.1 this server only delivers to its virtual mailboxes".into(),
        ),
        (
            "relay_transport",
            "error:5.7.1 this server only delivers to its virtual mailboxes".into(),
        ),
        // Keep every lookup off DNS.
        ("smtpd_peername_lookup", "no".into()),
        ("smtp_dns_support_level", "disabled".into()),
        ("lmtp_dns_support_level", "disabled".into()),
        ("biff", "no".into()),
        ("append_dot_mydomain", "no".into()),
        ("smtputf8_enable", "yes".into()),
        ("compatibility_level", "3.6".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut refused = Vec::new();
    if let Some(dir) = &input.tls_dir {
        main.extend(
            [
                ("smtpd_tls_cert_file", format!("{dir}/tls.crt")),
                ("smtpd_tls_key_file", format!("{dir}/tls.key")),
                // Opportunistic: clients that cannot do TLS still deliver (RFC 3207).
                ("smtpd_tls_security_level", "may".into()),
                ("smtpd_tls_mandatory_protocols", ">=TLSv1.2".into()),
                ("smtpd_tls_loglevel", "1".into()),
                ("smtpd_tls_received_header", "yes".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
    }
    let relay_host = input.relay_host.as_deref().filter(|relay_host| {
        let valid = virtmail_crds::resources::valid_relay_host(relay_host);
        if !valid {
            refused.push(format!(
                "outbound.relayHost {relay_host:?}: not host, host:port, [host] or [host]:port; \
                 nothing is relayed"
            ));
        }
        valid
    });
    apply_outbound(&mut main, relay_host);
    for (name, value) in &input.extra {
        if name == "relayhost" && relay_host.is_some() {
            refused.push("relayhost: set by the MailServer's outbound.relayHost".into());
            continue;
        }
        if PROTECTED.contains(&name.as_str()) {
            refused.push(format!(
                "{name}: set by virtmail's profile (the agent's wiring, postfix.tls or postfix.proxyProtocol); it cannot be overridden"
            ));
            continue;
        }
        if name == "message_size_limit" && input.mailbox_size_limit > 0 {
            match value.trim().parse::<u64>() {
                Ok(v) if v > 0 && v <= input.mailbox_size_limit => {}
                _ => {
                    refused.push(format!(
                        "message_size_limit: must be a number from 1 to mailboxSizeLimit ({})",
                        input.mailbox_size_limit
                    ));
                    continue;
                }
            }
        }
        if let Some(reason) = relay_refusal(name, value, relay_host.is_some()) {
            refused.push(reason);
            continue;
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || value.contains('\n') {
            refused.push(format!(
                "{name}: not a main.cf parameter name or a one-line value"
            ));
            continue;
        }
        match main.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value.clone(),
            None => main.push((name.clone(), value.clone())),
        }
    }
    let mut master: Vec<String> = UNCHROOTED_SERVICES
        .iter()
        .map(|s| format!("{s}/chroot = n"))
        .collect();
    master.push("lmtp/unix/command = lmtp flags=O".into());
    let services = input
        .proxy_protocol_port
        .map(|port| {
            format!(
                "{port}/inet = {port} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy"
            )
        })
        .into_iter()
        .collect();
    Profile {
        main,
        master,
        services,
        refused,
    }
}

/// With an outbound path, mail for other domains goes to the relay host through Postfix's smtp
/// client instead of being refused. Only the pod's own addresses (`mynetworks_style = host`:
/// the agent submitting replies on loopback) may send such mail; `reject_unauth_destination`
/// still refuses relaying for anyone else.
fn apply_outbound(main: &mut Vec<(String, String)>, relay_host: Option<&str>) {
    let Some(relay_host) = relay_host else {
        return;
    };
    for (name, value) in main.iter_mut() {
        match name.as_str() {
            "default_transport" => *value = "smtp".into(),
            "relay_transport" => *value = "relay".into(),
            _ => {}
        }
    }
    main.push(("relayhost".into(), relay_host.into()));
}

impl Profile {
    /// main.cf lines (`name = value`).
    pub fn main_cf(&self) -> String {
        let mut text = String::from("# virtmail Postfix profile (generated; do not edit)\n");
        for (name, value) in &self.main {
            let _ = writeln!(text, "{name} = {value}");
        }
        text
    }

    /// `postconf -F` lines for master.cf.
    pub fn master_cf(&self) -> String {
        let mut text = String::from("# postconf -F settings (generated; do not edit)\n");
        for line in &self.master {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    /// `postconf -M` lines: services added to master.cf.
    pub fn master_services_cf(&self) -> String {
        let mut text = String::from("# postconf -M services (generated; do not edit)\n");
        for line in &self.services {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ProfileInput {
        ProfileInput {
            lmtp_socket: "/run/virtmail/lmtp.sock".into(),
            socketmap_socket: "/run/virtmail/socketmap.sock".into(),
            mailbox_size_limit: 51_200_000,
            recipient_delimiter: "+".into(),
            extra: BTreeMap::new(),
            tls_dir: None,
            proxy_protocol_port: None,
            relay_host: None,
        }
    }

    fn get<'a>(p: &'a Profile, name: &str) -> Option<&'a str> {
        p.main
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn wires_postfix_to_the_agent_sockets() {
        let p = profile(&input());
        assert_eq!(
            get(&p, "virtual_transport"),
            Some("lmtp:unix:/run/virtmail/lmtp.sock")
        );
        assert_eq!(
            get(&p, "virtual_mailbox_maps"),
            Some("socketmap:unix:/run/virtmail/socketmap.sock:mailbox")
        );
        assert_eq!(get(&p, "virtual_alias_domains"), Some(""));
        assert_eq!(get(&p, "lmtp_line_length_limit"), Some("0"));
        assert_eq!(get(&p, "message_size_limit"), Some("10240000"));
        assert!(p.master.contains(&"lmtp/unix/chroot = n".to_string()));
        assert!(p.main_cf().contains("\nrecipient_delimiter = +\n"));
    }

    #[test]
    fn outbound_sends_through_the_relay_host_and_nothing_leaves_without_it() {
        let closed = profile(&input());
        assert_eq!(get(&closed, "relayhost"), None);
        assert!(get(&closed, "default_transport").is_some_and(|t| t.starts_with("error:")));
        let mut i = input();
        i.relay_host = Some("[smtp.example.net]:587".into());
        i.extra.insert("relayhost".into(), "elsewhere".into());
        let open = profile(&i);
        assert_eq!(get(&open, "relayhost"), Some("[smtp.example.net]:587"));
        assert_eq!(get(&open, "default_transport"), Some("smtp"));
        assert_eq!(get(&open, "relay_transport"), Some("relay"));
        assert_eq!(
            get(&open, "smtpd_relay_restrictions"),
            Some("permit_mynetworks, reject_unauth_destination")
        );
        assert_eq!(get(&open, "mynetworks_style"), Some("host"));
        assert_eq!(open.refused.len(), 1, "{:?}", open.refused);
        i.relay_host = Some("relay.test\nmynetworks = 0.0.0.0/0".into());
        let injected = profile(&i);
        // Without a usable outbound path, a relayhost parameter is refused too.
        assert_eq!(get(&injected, "relayhost"), None);
        assert!(injected.refused.iter().any(|r| r.starts_with("relayhost:")));
        assert!(get(&injected, "default_transport").is_some_and(|t| t.starts_with("error:")));
        assert!(
            injected.refused[0].contains("outbound.relayHost"),
            "{:?}",
            injected.refused
        );
    }

    #[test]
    fn message_size_limit_never_exceeds_mailbox_limit() {
        assert_eq!(message_size_limit(1_000_000), 1_000_000);
        assert_eq!(message_size_limit(0), DEFAULT_MESSAGE_SIZE_LIMIT);
        let mut i = input();
        i.mailbox_size_limit = 1_000_000;
        i.extra
            .insert("message_size_limit".into(), "2000000".into());
        let p = profile(&i);
        assert_eq!(get(&p, "message_size_limit"), Some("1000000"));
        assert_eq!(p.refused.len(), 1);
    }

    #[test]
    fn extra_parameters_apply_but_never_the_protected_ones() {
        let mut i = input();
        i.extra.insert("virtual_transport".into(), "virtual".into());
        i.extra
            .insert("smtpd_banner".into(), "$myhostname ESMTP".into());
        i.extra.insert("default_transport".into(), "smtp".into());
        i.extra.insert("bad name".into(), "x".into());
        let p = profile(&i);
        assert_eq!(
            get(&p, "virtual_transport"),
            Some("lmtp:unix:/run/virtmail/lmtp.sock")
        );
        assert_eq!(get(&p, "smtpd_banner"), Some("$myhostname ESMTP"));
        assert_ne!(get(&p, "default_transport"), Some("smtp"));
        assert_eq!(p.refused.len(), 3, "{:?}", p.refused);
    }

    #[test]
    fn admission_refuses_the_same_protected_and_outbound_parameters() {
        let crd = serde_json::to_string(&virtmail_crds::crds()[0]).expect("CRD");
        for name in PROTECTED.iter().chain(OUTBOUND) {
            assert!(
                crd.contains(&format!("'{name}'")),
                "the MailServer CRD's rule does not name {name}"
            );
        }
    }

    #[test]
    fn parameters_that_would_relay_for_others_are_refused() {
        for (name, value, outbound, refused) in [
            ("mynetworks", "127.0.0.0/8 [::1]/128", false, false),
            ("mynetworks", "127.0.0.0/8, 10.0.0.0/8", false, true),
            ("mynetworks", "0.0.0.0/0", false, true),
            ("mynetworks_style", "host", false, false),
            ("mynetworks_style", "subnet", false, true),
            (
                "smtpd_relay_restrictions",
                "permit_mynetworks, reject_unauth_destination",
                false,
                false,
            ),
            ("smtpd_relay_restrictions", "permit_mynetworks", false, true),
            (
                "smtpd_relay_restrictions",
                "permit, reject_unauth_destination",
                false,
                true,
            ),
            ("relayhost", "[smtp.example.net]:587", false, true),
            ("relayhost", "[smtp.example.net]:587", true, false),
            ("smtpd_banner", "$myhostname ESMTP", false, false),
        ] {
            assert_eq!(
                relay_refusal(name, value, outbound).is_some(),
                refused,
                "{name} = {value} (outbound declared: {outbound})"
            );
        }
        let mut i = input();
        i.extra.insert("mynetworks".into(), "0.0.0.0/0".into());
        let p = profile(&i);
        assert_eq!(get(&p, "mynetworks"), None);
        assert_eq!(p.refused.len(), 1);
    }

    #[test]
    fn tls_and_proxy_protocol_are_wired_from_the_mailserver_only() {
        let mut i = input();
        i.tls_dir = Some("/etc/virtmail/tls".into());
        i.proxy_protocol_port = Some(10025);
        i.extra
            .insert("smtpd_tls_cert_file".into(), "/tmp/other.crt".into());
        let p = profile(&i);
        assert_eq!(
            get(&p, "smtpd_tls_cert_file"),
            Some("/etc/virtmail/tls/tls.crt")
        );
        assert_eq!(get(&p, "smtpd_tls_security_level"), Some("may"));
        assert_eq!(p.refused.len(), 1);
        assert_eq!(
            p.master_services_cf().lines().nth(1),
            Some(
                "10025/inet = 10025 inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy"
            )
        );
        assert!(get(&profile(&input()), "smtpd_tls_cert_file").is_none());
    }
}
