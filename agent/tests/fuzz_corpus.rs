//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) through its target's
//! property checks on the stable toolchain, so seeds and every crash turned regression stay
//! fixed in CI without nightly or libFuzzer. `scripts/fuzz.sh` runs the same functions under
//! cargo-fuzz.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use virtmail_agent::source::assemble::{Assembly, assemble};
use virtmail_crds::encoding;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Run every file of `target`'s corpus; fail naming each file whose properties fail.
fn replay(target: &str) {
    let (_, run) = targets::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {why}", file.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus files fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn lmtp_sessions_in_the_corpus_keep_reply_and_delivery_properties() {
    replay("lmtp_command");
}

#[test]
fn lmtp_data_in_the_corpus_decodes_the_same_in_any_chunking_and_round_trips() {
    replay("lmtp_data");
}

#[test]
fn socketmap_streams_in_the_corpus_frame_canonically_and_get_one_reply_each() {
    replay("socketmap_netstring");
}

#[test]
fn manifests_in_the_corpus_compile_to_valid_directories_that_survive_encoding() {
    replay("resources_yaml");
}

#[test]
fn directory_configmaps_in_the_corpus_assemble_or_refuse_without_panicking() {
    replay("directory_decode");
}

#[test]
fn messages_in_the_corpus_are_mbox_quoted_exactly_on_from_lines() {
    replay("mbox_quoting");
}

#[test]
fn append_journals_in_the_corpus_parse_bounded_and_round_trip() {
    replay("mbox_journal");
}

#[test]
fn every_fuzz_target_has_a_corpus_and_every_corpus_a_target() {
    let names: Vec<&str> = targets::TARGETS.iter().map(|(name, _)| *name).collect();
    for entry in std::fs::read_dir(corpus_dir("")).expect("fuzz/corpus") {
        let name = entry.expect("corpus dir").file_name();
        let name = name.to_string_lossy();
        assert!(
            names.contains(&name.as_ref()),
            "fuzz/corpus/{name} belongs to no target"
        );
    }
    for name in names {
        assert!(corpus_dir(name).is_dir(), "fuzz/corpus/{name} is missing");
        let target = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}

#[test]
fn directory_container_holds_an_encoded_directory_exactly() {
    let directory = targets::fixture_directory();
    let encoded = encoding::encode(directory);
    let text = targets::directory_container(&encoded, false);
    let (head, shards, fix) = targets::parse_container(&text);
    assert!(!fix);
    assert_eq!(head, encoded.head);
    let want: BTreeMap<_, _> = encoded
        .shards
        .iter()
        .map(|s| (s.name.clone(), (*s.data).clone()))
        .collect();
    assert_eq!(shards, want);
    match assemble(Some(&head), &shards, None) {
        Assembly::Ready { decoded, version } => {
            assert_eq!(decoded.directory, *directory);
            assert_eq!(version, encoded.version);
        }
        other => panic!("the fixture directory does not assemble: {other:?}"),
    }
}

#[test]
fn lmtp_harness_answers_the_seed_sessions_like_the_real_server() {
    let seed = |name: &str| std::fs::read(corpus_dir("lmtp_command").join(name)).expect("seed");
    let (out, delivered) = targets::lmtp_session(&seed("one-recipient-delivery"));
    let text = String::from_utf8_lossy(&out);
    assert_eq!(delivered, 1, "{text}");
    assert!(
        text.contains("250 2.0.0 <alice@example.test> fuzz-delivered\r\n221 2.0.0 Bye\r\n"),
        "{text}"
    );
    let (out, delivered) = targets::lmtp_session(&seed("pipelined-mixed-recipients"));
    let text = String::from_utf8_lossy(&out);
    assert_eq!(delivered, 4, "{text}");
    for line in [
        "550 5.1.1 <nobody@example.test>",
        "450 4.2.1 <frozen@example.test>",
        "451 4.3.5 <broken@example.test>",
        "250 2.0.0 <Bob+ext@Example.TEST> fuzz-delivered",
        "250 2.0.0 <anyone@catchall.test> fuzz-delivered",
        "250 2.0.0 <bob@example.test> fuzz-delivered",
    ] {
        assert!(text.contains(line), "{line} missing from {text}");
    }
    let (out, delivered) = targets::lmtp_session(&seed("client-vanishes-inside-data"));
    assert_eq!(delivered, 0, "{}", String::from_utf8_lossy(&out));
}

/// Found by fuzzing (`lmtp_command`): the reply to a long unknown recipient repeated the address
/// in its text and went over RFC 5321's 512 octets per reply line.
#[test]
fn lmtp_reply_to_a_long_unknown_recipient_stays_within_512_octets() {
    let local = "x".repeat(64);
    let domain = format!("{}.example.test", "d".repeat(170));
    let input =
        format!("LHLO mx.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<{local}@{domain}>\r\nQUIT\r\n");
    let (out, _) = targets::lmtp_session(input.as_bytes());
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("\r\n550 5.1.1 <"), "{text}");
}
