//! Message bytes: line ends, Postfix's prepended original recipient, prepended headers, mbox
//! quoting, loop detection (virtual(8) V21, V26, V31; docs/DELIVERY.md).

use std::borrow::Cow;

use virtmail_crds::address::{fold, quote_address};

use super::Recipient;

/// Turn CRLF line ends into LF and keep every other byte (virtual(8) V31): a stray CR inside a line,
/// 8-bit bytes and NUL stay as they are. Borrowed when there is nothing to change.
pub fn crlf_to_lf(message: &[u8]) -> Cow<'_, [u8]> {
    if !message.windows(2).any(|w| w == b"\r\n") {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len());
    let mut i = 0;
    while i < message.len() {
        if message[i] == b'\r' && message.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(message[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// The original recipient that Postfix's lmtp(8) prepends with master.cf `flags=O` (the virtmail
/// profile sets it, with one recipient per transaction): an `X-Original-To:` header as the very
/// first line. Returns the address and the message without that line.
///
/// Mail that came through Postfix otherwise always starts with Postfix's own `Received:`, so a
/// sender cannot put an `X-Original-To:` first.
pub fn postfix_original_recipient(message: &[u8]) -> Option<(String, &[u8])> {
    const NAME: &[u8] = b"X-Original-To: ";
    let rest = message.strip_prefix(NAME)?;
    let end = rest.iter().position(|b| *b == b'\n')?;
    // A folded (continued) header is not what Postfix writes: leave the message alone.
    if matches!(rest.get(end + 1), Some(b' ' | b'\t')) {
        return None;
    }
    let value = std::str::from_utf8(&rest[..end]).ok()?.trim();
    let value = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or(value);
    // Postfix writes an address: anything with control characters (a bare CR, say) is not its
    // header, and would be written into the mailbox as a header the agent vouches for.
    if value.is_empty() || value.chars().any(char::is_control) {
        return None;
    }
    Some((value.to_string(), &rest[end + 1..]))
}

/// The message to store for a transaction of `recipients`: with one recipient and Postfix's
/// prepended `X-Original-To:` ([`postfix_original_recipient`]), that line is taken off and its
/// address becomes the recipient's original, so the copy's own headers come in virtual(8)'s
/// order (Return-Path, X-Original-To, Delivered-To) and name the address before alias
/// expansion, which LMTP alone cannot carry without DSN.
pub fn adopt_postfix_original_recipient<'m>(
    recipients: &mut [Recipient],
    message: &'m [u8],
) -> &'m [u8] {
    if let [only] = recipients
        && let Some((original, rest)) = postfix_original_recipient(message)
    {
        only.original_recipient = original;
        return rest;
    }
    message
}

/// The null sender as written in headers and the From_ line.
fn quoted_sender(sender: &str) -> String {
    if sender.is_empty() {
        String::new()
    } else {
        quote_address(sender)
    }
}

/// `Return-Path:`, `X-Original-To:` (when the original recipient is not empty) and
/// `Delivered-To:`, each ending in LF (virtual(8) V21 items 2–4, V26).
pub fn prepended_headers(sender: &str, original_recipient: &str, recipient: &str) -> Vec<u8> {
    let mut out = format!("Return-Path: <{}>\n", quoted_sender(sender));
    if !original_recipient.is_empty() {
        out.push_str(&format!(
            "X-Original-To: {}\n",
            quote_address(original_recipient)
        ));
    }
    out.push_str(&format!("Delivered-To: {}\n", quote_address(recipient)));
    out.into_bytes()
}

/// The mbox From_ line: `From <sender>  <asctime date>\n`, TWO spaces, `MAILER-DAEMON` for the
/// null sender (virtual(8) V21 item 1). `date` is [`asctime_now`].
pub fn from_line(sender: &str, date: &str) -> String {
    let sender = if sender.is_empty() {
        "MAILER-DAEMON".to_string()
    } else {
        quote_address(sender)
    };
    format!("From {sender}  {date}\n")
}

/// `asctime(localtime(now))` without its newline: `Thu Aug 21 09:05:03 2026`, day of month
/// space-padded, in the local time zone (TZ, else /etc/localtime).
pub fn asctime_now() -> String {
    jiff::Zoned::now()
        .strftime("%a %b %e %H:%M:%S %Y")
        .to_string()
}

/// Append `message` with mboxo quoting: every line that begins with `From ` gets a `>` (lines
/// already `>From ` are left alone); a final LF is added when the last line lacks one
/// (virtual(8) V21 items 5–6; the caller adds the empty separator line).
pub fn push_mbox_quoted(out: &mut Vec<u8>, message: &[u8]) {
    let mut rest = message;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        if line.starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        rest = tail;
    }
    push_final_newline(out, message);
}

/// Add LF when a non-empty message does not end in one (virtual(8) V21 item 6, V26).
pub fn push_final_newline(out: &mut Vec<u8>, message: &[u8]) {
    if message.last().is_some_and(|&b| b != b'\n') {
        out.push(b'\n');
    }
}

/// Whether the header section already has `Delivered-To: <recipient>` (case-insensitive,
/// quoted or not, angle brackets allowed): the message is looping (docs/DELIVERY.md, local(8)'s
/// 5.4.6 rule).
pub fn has_delivered_to(message: &[u8], recipient: &str) -> bool {
    let wanted = [fold(recipient), fold(&quote_address(recipient))];
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some(last) = fields.last_mut() {
                last.extend_from_slice(line);
            }
            continue;
        }
        fields.push(line.to_vec());
    }
    fields.iter().any(|field| {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            return false;
        };
        let (name, value) = field.split_at(colon);
        if !name.eq_ignore_ascii_case(b"Delivered-To") {
            return false;
        }
        let value = String::from_utf8_lossy(&value[1..]);
        let value = value.trim();
        let value = value
            .strip_prefix('<')
            .and_then(|v| v.strip_suffix('>'))
            .unwrap_or(value);
        let value = fold(value.trim());
        wanted.contains(&value)
    })
}

/// RFC 822 size as Dovecot counts it for `,W=`: every LF not preceded by CR counts two bytes.
pub fn virtual_size(data: &[u8]) -> u64 {
    let mut size = data.len() as u64;
    let mut previous = 0u8;
    for &b in data {
        if b == b'\n' && previous != b'\r' {
            size += 1;
        }
        previous = b;
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v31_crlf_becomes_lf_and_other_bytes_stay() {
        assert_eq!(
            &*crlf_to_lf(b"a\r\nb\rc\r\r\n\0\xff\r\n"),
            b"a\nb\rc\r\n\0\xff\n"
        );
        assert!(matches!(crlf_to_lf(b"a\nb\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn v21_from_line_has_two_spaces_and_mailer_daemon() {
        assert_eq!(
            from_line("a@b", "Thu Aug 21 09:05:03 2026"),
            "From a@b  Thu Aug 21 09:05:03 2026\n"
        );
        assert_eq!(from_line("", "X").as_str(), "From MAILER-DAEMON  X\n");
        assert_eq!(from_line("a b@c", "X").as_str(), "From \"a b\"@c  X\n");
    }

    #[test]
    fn v21_asctime_is_24_characters_with_padded_day() {
        let date = asctime_now();
        assert_eq!(date.len(), 24, "{date:?}");
        assert_eq!(&date[3..4], " ");
        assert_eq!(&date[10..11], " ");
    }

    #[test]
    fn v21_mboxo_quoting() {
        let mut out = Vec::new();
        push_mbox_quoted(
            &mut out,
            b"From x\nFrom: y\n>From z\n From w\nab From c\nFrom ",
        );
        assert_eq!(
            out,
            b">From x\nFrom: y\n>From z\n From w\nab From c\n>From \n".to_vec()
        );
    }

    #[test]
    fn v21_prepended_headers() {
        assert_eq!(
            prepended_headers("", "Orig@x", "Bob+t@Example.test"),
            b"Return-Path: <>\nX-Original-To: Orig@x\nDelivered-To: Bob+t@Example.test\n"
        );
        assert_eq!(
            prepended_headers("a b@c", "", "r@x"),
            b"Return-Path: <\"a b\"@c>\nDelivered-To: r@x\n"
        );
    }

    #[test]
    fn loop_detection_reads_headers_only() {
        let m = b"Subject: x\nDelivered-To: <Bob@Example.TEST>\n\nbody\n";
        assert!(has_delivered_to(m, "bob@example.test"));
        assert!(!has_delivered_to(m, "carol@example.test"));
        let body_only = b"Subject: x\n\nDelivered-To: bob@example.test\n";
        assert!(!has_delivered_to(body_only, "bob@example.test"));
        let folded = b"Delivered-To:\n bob@example.test\n\n";
        assert!(has_delivered_to(folded, "bob@example.test"));
    }

    fn recipient(address: &str) -> Recipient {
        Recipient {
            address: address.into(),
            original_recipient: address.into(),
        }
    }

    #[test]
    fn postfix_prepended_x_original_to_is_taken_off_for_one_recipient() {
        let m = b"X-Original-To: <postmaster@virtual1.test>\nReceived: x\n\nbody\n";
        let mut one = [recipient("root@virtual1.test")];
        assert_eq!(
            adopt_postfix_original_recipient(&mut one, m),
            b"Received: x\n\nbody\n"
        );
        assert_eq!(one[0].original_recipient, "postmaster@virtual1.test");
        let mut two = [recipient("a@x.test"), recipient("b@x.test")];
        assert_eq!(adopt_postfix_original_recipient(&mut two, m), m);
        assert_eq!(two[0].original_recipient, "a@x.test");
    }

    /// The last three were found by fuzzing (`lmtp_command`): control characters on the first
    /// line would have been written into X-Original-To.
    #[test]
    fn other_first_lines_are_left_in_the_message() {
        for text in [
            &b"Received: x\nX-Original-To: a@b\n\n"[..],
            b"X-Original-To: a@b\n continued\n\n",
            b"X-Original-To: \n\n",
            b"X-Original-To: team@example.test\r\x08Received: x\n\nbody\n",
            b"X-Original-To: a\0b@example.test\nReceived: x\n\n",
            b"X-Original-To: a@example.test\x1b[2J\nReceived: x\n\n",
        ] {
            assert_eq!(postfix_original_recipient(text), None, "{text:?}");
        }
    }

    #[test]
    fn dovecot_virtual_size() {
        assert_eq!(virtual_size(b"a\nb\n"), 6);
        assert_eq!(virtual_size(b"a\r\nb"), 4);
    }
}
