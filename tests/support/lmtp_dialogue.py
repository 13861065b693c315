"""The reference LMTP dialogue with Python's smtplib.LMTP (a real, independent client).

Usage: lmtp_dialogue.py SOCKET SENDER RCPT...   Prints one line per step:
  lhlo <space-separated capabilities>
  mail <code> <text>
  rcpt <addr> <code> <text>
  data <addr> <code> <text>      (one per accepted recipient, in RCPT order)
  quit <code>
"""
import smtplib
import sys

sock, sender, rcpts = sys.argv[1], sys.argv[2], sys.argv[3:]
lmtp = smtplib.LMTP(sock)  # a path with '/' makes smtplib use a unix socket
code, _ = lmtp.ehlo("client.test")  # LMTP.ehlo sends LHLO
assert code == 250, code
print("lhlo", " ".join(sorted(lmtp.esmtp_features)))
code, text = lmtp.mail(sender, ["SIZE=100", "BODY=8BITMIME"])
print("mail", code, text.decode())
accepted = []
for r in rcpts:
    code, text = lmtp.rcpt(r)
    print("rcpt", r, code, text.decode())
    if code == 250:
        accepted.append(r)
if accepted:
    body = (
        b"From: Sender <" + sender.encode() + b">\r\n"
        b"Subject: reference dialogue\r\n\r\n"
        b"line one\r\n.leading dot\r\n..two dots\r\n"
    )
    # smtplib reads only the first post-dot reply; LMTP sends one per accepted recipient.
    code, text = lmtp.data(body)
    print("data", accepted[0], code, text.decode())
    for r in accepted[1:]:
        code, text = lmtp.getreply()
        print("data", r, code, text.decode())
code, _ = lmtp.docmd("QUIT")
print("quit", code)
