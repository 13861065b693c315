//! Maildir delivery (virtual(8) V24–V28) with the durability docs/DELIVERY.md describes and Dovecot-compatible names.

mod deliver_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use deliver_support::*;

const ALICE: &str = "alice@example.test";

fn world() -> World {
    let mut w = World::create();
    w.domain_dir();
    w.mailbox(ALICE, "example.test/alice/");
    w
}

fn only_file(dir: &std::path::Path) -> std::path::PathBuf {
    let names = names(dir);
    assert_eq!(names.len(), 1, "{names:?} in {}", dir.display());
    dir.join(&names[0])
}

#[test]
fn v24_maildir_and_subdirectories_are_created_0700_as_recipient() {
    let w = world();
    let outcome = w.deliver(ALICE, MESSAGE);
    assert_eq!(outcome.status.to_string(), "2.0.0 delivered to maildir");
    let root = w.base.join("example.test/alice");
    for dir in [
        &root,
        &root.join("tmp"),
        &root.join("new"),
        &root.join("cur"),
    ] {
        assert_eq!(owner(dir), (UID, GID), "{}", dir.display());
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let file = only_file(&root.join("new"));
    assert_eq!(owner(&file), (UID, GID));
    assert_eq!(mode(&file), 0o600);
    assert_eq!(outcome.path.as_deref(), Some(file.to_str().unwrap()));
}

#[test]
fn v24_missing_parents_are_created_as_recipient_when_the_base_allows() {
    let mut w = World::create();
    chown(&w.base, UID, GID);
    w.mailbox(ALICE, "new.test/deep/alice/");
    assert_eq!(code(&w.deliver(ALICE, MESSAGE).status), "2.0.0");
    assert_eq!(owner(&w.base.join("new.test/deep")), (UID, GID));
}

/// The provisioned layout: a root-owned 0711 domain directory (passable, not listable) with the
/// recipient's Maildir in it. Walking the path one component at a time (to check each
/// directory's owner) needs only search permission on it.
#[test]
fn maildir_below_a_root_0711_domain_directory_is_delivered() {
    let mut w = World::create();
    let domain = w.mkdir("example.test", 0, 0);
    fs::set_permissions(&domain, fs::Permissions::from_mode(0o711)).unwrap();
    w.mkdir("example.test/alice", UID, GID);
    w.mailbox(ALICE, "example.test/alice/");
    let outcome = w.deliver(ALICE, MESSAGE);
    assert_eq!(code(&outcome.status), "2.0.0", "{}", outcome.status);
}

#[test]
fn v28_unwritable_parent_defers_420_with_access_warning() {
    let mut w = World::create();
    w.mkdir("example.test", 0, 0);
    w.mailbox(ALICE, "example.test/alice/");
    let outcome = w.deliver(ALICE, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    assert!(outcome.status.text.starts_with("maildir delivery failed: "));
    assert!(outcome.status.text.ends_with("Permission denied"));
    let warning = outcome.status.warning.unwrap();
    assert!(
        warning.starts_with("maildir access problem for UID/GID=5001/5001"),
        "{warning}"
    );
}

#[test]
fn v25_name_is_dovecot_style_with_exact_size() {
    let w = world();
    let outcome = w.deliver(ALICE, b"Subject: s\n\nline\n");
    let file = only_file(&w.base.join("example.test/alice/new"));
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let size = fs::metadata(&file).unwrap().len();
    let lines = fs::read(&file)
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64;
    // <sec>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>
    let (unique, fields) = name.split_once(',').unwrap();
    assert_eq!(fields, format!("S={size},W={}", size + lines));
    let parts: Vec<&str> = unique.splitn(3, '.').collect();
    assert!(parts[0].parse::<u64>().is_ok(), "{name}");
    let id = parts[1];
    assert!(
        id.starts_with('M') && id.contains('P') && id.contains('Q'),
        "{name}"
    );
    assert_eq!(parts[2], "mx.test");
    assert!(!name.contains(':') && !name.contains('/'));
    assert_eq!(outcome.size, size);
}

#[test]
fn v26_content_has_headers_no_from_line_no_quoting_and_a_final_newline() {
    let w = world();
    w.deliver_with(
        ALICE,
        "s@origin.test",
        b"Subject: s\n\nFrom here\nno newline",
        &options(),
    );
    let file = only_file(&w.base.join("example.test/alice/new"));
    assert_eq!(
        fs::read_to_string(file).unwrap(),
        "Return-Path: <s@origin.test>\nX-Original-To: alice@example.test\nDelivered-To: alice@example.test\nSubject: s\n\nFrom here\nno newline\n"
    );
}

#[test]
fn v27_tmp_is_empty_and_each_delivery_gets_its_own_file() {
    let w = world();
    for _ in 0..5 {
        assert_eq!(code(&w.deliver(ALICE, MESSAGE).status), "2.0.0");
    }
    assert_eq!(names(&w.base.join("example.test/alice/tmp")).len(), 0);
    assert_eq!(names(&w.base.join("example.test/alice/new")).len(), 5);
}

#[test]
fn v27_cur_is_created_when_new_exists() {
    let w = world();
    let root = w.mkdir("example.test/alice", UID, GID);
    w.mkdir("example.test/alice/new", UID, GID);
    w.mkdir("example.test/alice/tmp", UID, GID);
    assert_eq!(code(&w.deliver(ALICE, MESSAGE).status), "2.0.0");
    assert!(root.join("cur").is_dir());
}

/// [`World::mkdir`] with mode 0777, so that only the ownership check can stop a delivery.
fn mkdir_writable_by_all(w: &World, rel: &str, uid: u32, gid: u32) {
    let path = w.mkdir(rel, uid, gid);
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap();
}

#[test]
fn maildir_owned_by_another_uid_defers_420() {
    let w = world();
    mkdir_writable_by_all(&w, "example.test/alice", OTHER_UID, GID);
    let outcome = w.deliver(ALICE, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    assert!(outcome.status.text.contains("not owned by recipient"));
    assert!(names(&w.base.join("example.test/alice")).is_empty());
}

#[test]
fn maildir_new_owned_by_another_uid_defers_420() {
    let w = world();
    w.mkdir("example.test/alice", UID, GID);
    mkdir_writable_by_all(&w, "example.test/alice/new", OTHER_UID, OTHER_GID);
    let outcome = w.deliver(ALICE, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    assert!(names(&w.base.join("example.test/alice/new")).is_empty());
    assert!(names(&w.base.join("example.test/alice/tmp")).is_empty());
}

#[test]
fn v29_size_limit_bounces_522_and_leaves_nothing_in_new_or_tmp() {
    let mut w = world();
    w.directory.settings.mailbox_size_limit = 200;
    let outcome = w.deliver(ALICE, &[b'x'; 300]);
    assert_eq!(
        outcome.status.to_string(),
        "5.2.2 maildir delivery failed: error writing message: File too large"
    );
    assert!(names(&w.base.join("example.test/alice/new")).is_empty());
    assert!(names(&w.base.join("example.test/alice/tmp")).is_empty());
}

#[test]
fn maildirsize_quota_is_dovecot_readable_and_enforced() {
    let mut w = world();
    w.directory.mailboxes.get_mut(ALICE).unwrap().quota = Some(1000);
    let first = w.deliver(ALICE, MESSAGE);
    assert_eq!(code(&first.status), "2.0.0");
    let root = w.base.join("example.test/alice");
    let maildirsize = fs::read_to_string(root.join("maildirsize")).unwrap();
    // Line 1: limits; then "<bytes> <count>" lines (rebuilt before, appended after).
    let mut lines = maildirsize.lines();
    assert_eq!(lines.next(), Some("1000S"));
    let total: i64 = lines
        .map(|l| l.split_whitespace().next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total as u64, first.size);
    assert_eq!(owner(&root.join("maildirsize")), (UID, GID));
    // Over quota with this message: refused, nothing written.
    let outcome = w.deliver(ALICE, &[b'q'; 900]);
    assert_eq!(code(&outcome.status), "5.2.2", "{}", outcome.status);
    assert_eq!(names(&root.join("new")).len(), 1);
    // Fill it up: RCPT time refuses too.
    fs::write(root.join("maildirsize"), "1000S\n1000 1\n").unwrap();
    let status = virtmail_agent::deliver::precheck(&w.directory, ALICE).unwrap_err();
    assert_eq!(
        status.to_string(),
        "5.2.2 maildir delivery failed: mailbox is over quota"
    );
}

#[test]
fn maildirsize_is_recalculated_from_s_fields_when_unusable() {
    let mut w = world();
    w.directory.mailboxes.get_mut(ALICE).unwrap().quota = Some(10_000);
    let root = w.mkdir("example.test/alice", UID, GID);
    for sub in ["new", "cur", "tmp", ".Sent", ".Sent/cur"] {
        w.mkdir(&format!("example.test/alice/{sub}"), UID, GID);
    }
    fs::write(root.join("cur/1.M1P1.h,S=4000:2,S"), b"x").unwrap();
    fs::write(root.join(".Sent/cur/2.M1P1.h,S=5000:2,S"), b"x").unwrap();
    fs::write(root.join("maildirsize"), "garbage\n-5 x\n").unwrap();
    let outcome = w.deliver(ALICE, &[b'q'; 2000]);
    assert_eq!(code(&outcome.status), "5.2.2", "{}", outcome.status);
    assert!(
        fs::read_to_string(root.join("maildirsize"))
            .unwrap()
            .starts_with("10000S\n9000 2\n")
    );
}

#[test]
fn stale_tmp_files_are_removed_and_fresh_ones_kept() {
    let w = world();
    assert_eq!(code(&w.deliver(ALICE, MESSAGE).status), "2.0.0");
    let tmp = w.base.join("example.test/alice/tmp");
    let old = tmp.join("1.M1P1.crashed");
    let fresh = tmp.join("2.M1P1.in-progress");
    for path in [&old, &fresh] {
        fs::write(path, b"partial").unwrap();
        chown(path, UID, GID);
    }
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    assert_eq!(code(&w.deliver(ALICE, MESSAGE).status), "2.0.0");
    assert_eq!(names(&tmp), vec!["2.M1P1.in-progress"]);
}
