//! Attack suite: symlinks at every level, hard links, foreign owners, special files and bad
//! paths. Each defers or bounces with the spec's status and nothing outside the base changes
//! (DESIGN §4.1–4.2, spec V14, V17, V20).

mod deliver_support;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use deliver_support::*;

const BOB: &str = "bob@example.test";
const ALICE: &str = "alice@example.test";

fn world() -> World {
    let mut w = World::new();
    w.domain_dir();
    w.mailbox(BOB, "example.test/bob");
    w.mailbox(ALICE, "example.test/alice/");
    w
}

fn assert_unsafe(w: &World, rcpt: &str) {
    let outcome = w.deliver(rcpt, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    assert_eq!(outcome.status.reply_code(), 451);
    let warning = outcome.status.warning.clone().unwrap_or_default();
    let object = rcpt.split('@').next().unwrap();
    assert!(
        warning.contains(&format!("Mailbox/{object}")),
        "warning names the mailbox: {warning:?} ({})",
        outcome.status
    );
    w.assert_outside_untouched();
}

#[test]
fn symlink_as_the_mbox_file_defers_420() {
    let w = world();
    symlink(w.outside.join("victim"), w.base.join("example.test/bob")).unwrap();
    assert_unsafe(&w, BOB);
}

#[test]
fn symlink_as_the_mbox_parent_defers_420() {
    let mut w = World::new();
    symlink(&w.outside, w.base.join("example.test")).unwrap();
    w.mailbox(BOB, "example.test/victim");
    assert_unsafe(&w, BOB);
}

#[test]
fn symlink_as_a_deeper_parent_defers_420() {
    let mut w = World::new();
    w.mkdir("example.test", UID, GID);
    symlink(&w.outside, w.base.join("example.test/sub")).unwrap();
    w.mailbox(BOB, "example.test/sub/victim");
    w.mailbox(ALICE, "example.test/sub/alice/");
    assert_unsafe(&w, BOB);
    assert_unsafe(&w, ALICE);
}

#[test]
fn symlink_at_the_dotlock_path_is_never_followed() {
    let w = world();
    // Dangling and existing targets: O_EXCL never follows, so the lock stays busy and the
    // delivery defers when the wait times out.
    symlink(
        w.outside.join("created-by-lock"),
        w.base.join("example.test/bob.lock"),
    )
    .unwrap();
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    w.assert_outside_untouched();
    fs::remove_file(w.base.join("example.test/bob.lock")).unwrap();
    symlink(
        w.outside.join("victim"),
        w.base.join("example.test/bob.lock"),
    )
    .unwrap();
    assert_eq!(code(&w.deliver(BOB, MESSAGE).status), "4.2.0");
    w.assert_outside_untouched();
    assert!(!w.base.join("example.test/bob").exists());
}

#[test]
fn symlink_as_the_maildir_defers_420() {
    let w = world();
    symlink(&w.outside, w.base.join("example.test/alice")).unwrap();
    assert_unsafe(&w, ALICE);
}

#[test]
fn symlink_as_maildir_new_or_tmp_defers_420() {
    for sub in ["new", "tmp", "cur"] {
        let w = world();
        w.mkdir("example.test/alice", UID, GID);
        for other in ["new", "tmp", "cur"].iter().filter(|s| **s != sub) {
            w.mkdir(&format!("example.test/alice/{other}"), UID, GID);
        }
        symlink(&w.outside, w.base.join(format!("example.test/alice/{sub}"))).unwrap();
        assert_unsafe(&w, ALICE);
    }
}

#[test]
fn symlink_as_the_maildir_parent_defers_420() {
    let mut w = World::new();
    symlink(&w.outside, w.base.join("example.test")).unwrap();
    w.mailbox(ALICE, "example.test/alice/");
    assert_unsafe(&w, ALICE);
}

#[test]
fn hard_linked_mbox_defers_420() {
    let w = world();
    let mbox = w.base.join("example.test/bob");
    fs::hard_link(w.outside.join("victim"), &mbox).unwrap();
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(
        outcome.status.to_string(),
        format!(
            "4.2.0 delivery failed to mailbox {}: file has 2 hard links",
            mbox.display()
        )
    );
    w.assert_outside_untouched();
}

#[test]
fn v20_mbox_owned_by_another_uid_defers_420() {
    let w = world();
    let mbox = w.base.join("example.test/bob");
    fs::write(&mbox, b"theirs\n").unwrap();
    chown(&mbox, OTHER_UID, GID);
    fs::set_permissions(&mbox, PermissionsExt::from_mode(0o666)).unwrap();
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(
        outcome.status.to_string(),
        format!(
            "4.2.0 destination {} is not owned by recipient",
            mbox.display()
        )
    );
    assert_eq!(fs::read(&mbox).unwrap(), b"theirs\n");
}

#[test]
fn v20_fifo_as_the_mbox_bounces_535_without_blocking() {
    let w = world();
    let mbox = w.base.join("example.test/bob");
    nix::unistd::mkfifo(&mbox, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    chown(&mbox, UID, GID);
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(
        outcome.status.to_string(),
        "5.3.5 mail system configuration error"
    );
    assert_eq!(outcome.status.reply_code(), 554);
    assert!(
        outcome
            .status
            .warning
            .unwrap()
            .contains("is not a regular file")
    );
}

#[test]
fn v17_directory_as_the_mbox_defers_420() {
    let w = world();
    w.mkdir("example.test/bob", UID, GID);
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0");
    assert!(
        outcome.status.text.ends_with("file is a directory"),
        "{}",
        outcome.status
    );
}

#[test]
fn file_where_the_maildir_or_new_is_expected_defers_420() {
    let w = world();
    let root = w.base.join("example.test/alice");
    fs::write(&root, b"").unwrap();
    chown(&root, UID, GID);
    assert_eq!(code(&w.deliver(ALICE, MESSAGE).status), "4.2.0");
    fs::remove_file(&root).unwrap();
    w.mkdir("example.test/alice", UID, GID);
    fs::write(root.join("new"), b"").unwrap();
    let outcome = w.deliver(ALICE, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    assert!(names(&root.join("tmp")).is_empty());
}

#[test]
fn v14_dotdot_paths_defer_435() {
    let mut w = world();
    w.mailbox("up@example.test", "../outside/victim");
    w.mailbox("mid@example.test", "example.test/../../outside/m/");
    w.mailbox("tail@example.test", "example.test/..");
    for rcpt in ["up@example.test", "mid@example.test", "tail@example.test"] {
        let status = virtmail_agent::deliver::precheck(&w.directory, rcpt).unwrap_err();
        assert_eq!(status.to_string(), "4.3.5 mail system configuration error");
        assert!(status.warning.unwrap().contains("bad mailbox path"));
    }
    w.assert_outside_untouched();
}

#[test]
fn dot_absolute_and_nul_paths_defer_420() {
    let mut w = world();
    let absolute = w.outside.join("victim").display().to_string();
    w.mailbox("dot@example.test", "example.test/./dot");
    w.mailbox("abs@example.test", &absolute);
    w.mailbox("nul@example.test", "example.test/a\0b");
    for rcpt in ["dot@example.test", "abs@example.test", "nul@example.test"] {
        assert_unsafe(&w, rcpt);
    }
}

#[test]
fn base_reached_through_a_symlink_is_allowed() {
    let mut w = world();
    let link = w.dir.path().join("base-link");
    symlink(&w.base, &link).unwrap();
    w.directory.settings.mailbox_base = link.display().to_string();
    assert_eq!(code(&w.deliver(ALICE, MESSAGE).status), "2.0.0");
}
