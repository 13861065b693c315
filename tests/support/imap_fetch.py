#!/usr/bin/env python3
"""Fetch every message of INBOX read-only with BODY.PEEK[] and print "<length>\\n<bytes>" for each.

Usage: imap_fetch.py HOST PORT USER   (the test Dovecot accepts any password)
"""
import imaplib
import sys


def main():
    host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    imap = imaplib.IMAP4(host, port)
    imap.login(user, "x")
    typ, data = imap.select("INBOX", readonly=True)
    if typ != "OK":
        sys.exit(f"EXAMINE INBOX failed: {data}")
    out = sys.stdout.buffer
    if int(data[0]) > 0:
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        if typ != "OK":
            sys.exit(f"FETCH failed: {data}")
        for item in data:
            if isinstance(item, tuple):
                body = item[1]
                out.write(b"%d\n" % len(body))
                out.write(body)
    out.flush()
    imap.logout()


if __name__ == "__main__":
    main()
