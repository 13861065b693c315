//! Address syntax, case folding and extension splitting shared by the compiler and the agent.

/// Fold an address (or domain) for table lookups: ASCII lower case, and Unicode lower case when
/// the text is not ASCII (Postfix `casefold()` with SMTPUTF8, virtual(8) V2).
pub fn fold(text: &str) -> String {
    if text.is_ascii() {
        text.to_ascii_lowercase()
    } else {
        text.to_lowercase()
    }
}

/// Split `local@domain` at the last `@`. `None` when there is no `@`.
pub fn split(address: &str) -> Option<(&str, &str)> {
    address.rsplit_once('@')
}

/// Whether `domain` is a syntactically valid ASCII domain name (labels of letters, digits and
/// inner hyphens, at most 63 characters each, 253 in all).
pub fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether `local` is an unquoted local part virtmail accepts: a dot-atom of printable characters
/// (8-bit UTF-8 allowed for SMTPUTF8) without RFC 5322 specials.
fn valid_local_part(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !"\"<>()[]\\,;:@".contains(c))
}

/// Whether `address` is `local@domain` with a valid local part and domain.
pub fn valid_address(address: &str) -> bool {
    match split(address) {
        Some((local, domain)) => valid_local_part(local) && valid_domain(domain),
        None => false,
    }
}

/// Local parts that are never split at a delimiter (virtual(8) V4).
fn never_split(local: &str) -> bool {
    local.eq_ignore_ascii_case("postmaster")
        || local.eq_ignore_ascii_case("mailer-daemon")
        || local.eq_ignore_ascii_case("double-bounce")
}

/// Remove the address extension: cut the local part at the first character that is in
/// `delimiters` (virtual(8) V4). Returns `None` when nothing would be removed: no delimiter, an empty
/// delimiter set, a special local part, or a local part that would become empty.
/// `owner-x` and `x-request` are kept whole when `-` is a delimiter (Postfix
/// `owner_request_special = yes`).
pub fn strip_extension(address: &str, delimiters: &str) -> Option<String> {
    if delimiters.is_empty() {
        return None;
    }
    let (local, domain) = split(address)?;
    if never_split(local) {
        return None;
    }
    if delimiters.contains('-') {
        let lower = local.to_ascii_lowercase();
        if lower.starts_with("owner-") || lower.ends_with("-request") {
            return None;
        }
    }
    let cut = local.find(|c| delimiters.contains(c))?;
    if cut == 0 {
        return None;
    }
    Some(format!("{}@{}", &local[..cut], domain))
}

/// Quote a local part the way Postfix's `quote_822_local` does for headers and the From_ line:
/// wrapped in `"…"` when it is not a dot-atom. 8-bit bytes stay unquoted.
pub fn quote_local_part(local: &str) -> String {
    let needs_quotes = local.is_empty()
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || local
            .chars()
            .any(|c| c.is_ascii_control() || c == ' ' || "()<>@,;:\\\"[]".contains(c));
    if !needs_quotes {
        return local.to_string();
    }
    let mut quoted = String::with_capacity(local.len() + 2);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Quote the local part of `address` if needed (see [`quote_local_part`]).
pub fn quote_address(address: &str) -> String {
    match split(address) {
        Some((local, domain)) => format!("{}@{}", quote_local_part(local), domain),
        None => quote_local_part(address),
    }
}

/// The inverse of [`quote_address`]: Postfix sends the external (RFC 5321 quoted) form
/// `"john doe"@example.com` in socketmap keys and LMTP paths; the directory keys the internal
/// form `john doe@example.com`. Unquoted addresses come back unchanged.
pub fn unquote_address(address: &str) -> String {
    let Some(rest) = address.strip_prefix('"') else {
        return address.to_string();
    };
    let mut local = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, next)) = chars.next() {
                    local.push(next);
                }
            }
            '"' => return format!("{local}{}", &rest[i + 1..]),
            _ => local.push(c),
        }
    }
    address.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_fold_is_ascii_lowercase_and_unicode_lowercase() {
        assert_eq!(fold("Alice@Example.TEST"), "alice@example.test");
        assert_eq!(fold("ÄRGER@Example.test"), "ärger@example.test");
    }

    #[test]
    fn v4_extension_is_cut_at_first_delimiter() {
        assert_eq!(
            strip_extension("user+a+b@d", "+").as_deref(),
            Some("user@d")
        );
        assert_eq!(
            strip_extension("user-a+b@d", "+-").as_deref(),
            Some("user@d")
        );
        assert_eq!(strip_extension("user+@d", "+").as_deref(), Some("user@d"));
    }

    #[test]
    fn v4_special_and_leading_delimiter_are_not_split() {
        assert_eq!(
            strip_extension("postmaster+x@d", "+").as_deref(),
            Some("postmaster@d")
        );
        assert_eq!(strip_extension("double-bounce@d", "-"), None);
        assert_eq!(strip_extension("MAILER-DAEMON@d", "-"), None);
        assert_eq!(strip_extension("+x@d", "+"), None);
        assert_eq!(strip_extension("owner-list@d", "-"), None);
        assert_eq!(strip_extension("list-request@d", "-"), None);
        assert_eq!(strip_extension("user@d", "+"), None);
        assert_eq!(strip_extension("user+x@d", ""), None);
    }

    #[test]
    fn address_syntax() {
        assert!(valid_address("a.b@example.test"));
        assert!(valid_address("jörg@example.test"));
        assert!(!valid_address("a..b@example.test"));
        assert!(!valid_address("a b@example.test"));
        assert!(!valid_address("@example.test"));
        assert!(!valid_address("a@-example.test"));
        assert!(!valid_address("a@example..test"));
        assert!(!valid_address("noat"));
    }

    #[test]
    fn v21_local_part_quoting() {
        assert_eq!(quote_address("a.b@d"), "a.b@d");
        assert_eq!(quote_address("a b@d"), "\"a b\"@d");
        assert_eq!(quote_address("a..b@d"), "\"a..b\"@d");
        assert_eq!(quote_address("jörg@d"), "jörg@d");
        assert_eq!(quote_address("a\"b@d"), "\"a\\\"b\"@d");
    }

    #[test]
    fn unquoting_inverts_quoting() {
        assert_eq!(unquote_address("\"john doe\"@x.test"), "john doe@x.test");
        assert_eq!(unquote_address("\"a\\\"b\"@x.test"), "a\"b@x.test");
        assert_eq!(unquote_address("plain@x.test"), "plain@x.test");
        for address in [
            "john doe@x.test",
            "a\"b@x.test",
            ".dot@x.test",
            "plain@x.test",
        ] {
            assert_eq!(unquote_address(&quote_address(address)), address);
        }
    }
}
