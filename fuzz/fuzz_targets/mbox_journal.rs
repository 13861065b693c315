#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtmail_fuzz::mbox_journal(data));
