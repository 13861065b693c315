#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtmail_fuzz::lmtp_command(data));
