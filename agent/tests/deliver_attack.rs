//! Attack suite: symlinks at every level, hard links, foreign owners, special files and bad
//! paths. Each defers or bounces with the spec's status and nothing outside the base changes
//! (docs/SECURITY.md, virtual(8) V14, V17, V20).

mod deliver_support;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;

use deliver_support::*;
use virtmail_tests::fixtures::mailbox;

const BOB: &str = "bob@example.test";
const ALICE: &str = "alice@example.test";

fn world() -> World {
    let mut w = World::create();
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

/// The domain directory is a symlink out of the base; `rcpt`'s mailbox is at `path` in it.
fn assert_unsafe_behind_a_symlinked_domain(rcpt: &str, path: &str) {
    let mut w = World::create();
    symlink(&w.outside, w.base.join("example.test")).unwrap();
    w.mailbox(rcpt, path);
    assert_unsafe(&w, rcpt);
}

#[test]
fn symlink_as_the_mbox_file_defers_420() {
    let w = world();
    symlink(w.outside.join("victim"), w.base.join("example.test/bob")).unwrap();
    assert_unsafe(&w, BOB);
}

#[test]
fn symlink_as_the_mbox_parent_defers_420() {
    assert_unsafe_behind_a_symlinked_domain(BOB, "example.test/victim");
}

#[test]
fn symlink_as_a_deeper_parent_defers_420() {
    let mut w = World::create();
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
    assert_unsafe_behind_a_symlinked_domain(ALICE, "example.test/alice/");
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

// ---- Attacks by mailbox users and co-tenants on the names the agent uses ----

/// Run `f` on a thread and fail (instead of hanging the suite) when it takes longer than `limit`.
fn within<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("did not finish within {limit:?}: the delivery hangs"),
    }
}

/// The mailbox owner rewrites its append journal with numbers that overflow: delivery must
/// neither hang nor panic, must not truncate anything, and must deliver.
#[test]
fn crafted_append_journal_neither_hangs_nor_truncates() {
    for (from, length) in [
        (0u64, u64::MAX),
        (u64::MAX - 10, 4096),
        (u64::MAX, u64::MAX),
    ] {
        let w = world();
        let mbox = w.base.join("example.test/bob");
        assert_eq!(code(&w.deliver(BOB, MESSAGE).status), "2.0.0");
        let before = fs::read(&mbox).unwrap();
        let meta = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&mbox).unwrap());
        let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&mbox).unwrap());
        let mut journal = vec![0u8; 256];
        journal.extend_from_slice(
            format!(
                "virtmail-mbox-append 1\ndev {dev} ino {meta}\nfrom {from} length {length}\n0123456789abcdef\nend\n"
            )
            .as_bytes(),
        );
        let journal_path = w.base.join("example.test/.bob.virtmail-append");
        fs::write(&journal_path, &journal).unwrap();
        chown(&journal_path, UID, GID);
        let w = std::sync::Arc::new(w);
        let shared = w.clone();
        let outcome = within(std::time::Duration::from_secs(20), move || {
            shared.deliver(BOB, MESSAGE)
        });
        assert_eq!(
            code(&outcome.status),
            "2.0.0",
            "{from} {length}: {}",
            outcome.status
        );
        let after = fs::read(&mbox).unwrap();
        assert!(
            after.starts_with(&before),
            "{from} {length}: bytes before the append changed"
        );
    }
}

/// A Mailbox of the same uid whose mbox is the other mailbox's dotlock name: the stale-lock
/// rule must never unlink it, whatever its age (it is mail, not a lock).
#[test]
fn stale_lock_breaker_never_unlinks_a_mailbox_at_the_lock_name() {
    let mut w = world();
    w.mailbox("squat@example.test", "example.test/bob.lock");
    assert_eq!(
        code(&w.deliver("squat@example.test", MESSAGE).status),
        "2.0.0"
    );
    let squat = w.base.join("example.test/bob.lock");
    let mail = fs::read(&squat).unwrap();
    let options = virtmail_agent::deliver::Options {
        stale_lock_time: std::time::Duration::from_millis(200),
        ..options()
    };
    std::thread::sleep(std::time::Duration::from_millis(400));
    let outcome = w.deliver_with(BOB, "sender@origin.test", MESSAGE, &options);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    assert_eq!(
        fs::read(&squat).unwrap(),
        mail,
        "the other mailbox was removed or changed"
    );
}

/// The domain directory as shared with co-tenants: root's, mode 1777 (anyone may create, only
/// the owner may remove). Its path.
fn shared_domain_dir(w: &World) -> PathBuf {
    let domain = w.mkdir("example.test", 0, 0);
    fs::set_permissions(&domain, PermissionsExt::from_mode(0o1777)).unwrap();
    domain
}

/// A co-tenant (another uid) creates `bob.lock` in the shared directory and keeps it fresh:
/// reported at once with the foreign uid, not waited on silently, and never removed.
#[test]
fn dotlock_held_by_a_foreign_uid_is_reported_at_once() {
    let w = world();
    let domain = shared_domain_dir(&w);
    let lock = domain.join("bob.lock");
    fs::write(&lock, b"").unwrap();
    chown(&lock, OTHER_UID, OTHER_GID);
    let options = virtmail_agent::deliver::Options {
        lock_timeout: std::time::Duration::from_secs(3),
        stale_lock_time: std::time::Duration::from_millis(1),
        ..options()
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let outcome = w.deliver_with(BOB, "sender@origin.test", MESSAGE, &options);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    let warning = outcome.status.warning.clone().unwrap_or_default();
    assert!(
        warning.contains(&format!("uid {OTHER_UID}")),
        "the warning names the foreign owner: {warning:?}"
    );
    assert!(
        outcome.duration < std::time::Duration::from_secs(1),
        "waited {:?} on a lock a co-tenant holds",
        outcome.duration
    );
    assert!(lock.exists(), "a co-tenant's file was removed");
}

/// Delivery to `rcpt` defers 4.2.0 with a warning that names the co-tenant's uid.
fn assert_deferred_for_the_co_tenant(w: &World, rcpt: &str) {
    let outcome = w.deliver(rcpt, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0", "{rcpt}: {}", outcome.status);
    let warning = outcome.status.warning.unwrap_or_default();
    assert!(
        warning.contains(&format!("uid {OTHER_UID}")),
        "{rcpt}: the warning names the co-tenant: {warning:?}"
    );
}

/// A co-tenant creates a FIFO where bob's mbox will be: deferred (mail kept), not bounced.
#[test]
fn fifo_planted_by_a_co_tenant_defers_instead_of_bouncing() {
    let w = world();
    let domain = shared_domain_dir(&w);
    let mbox = domain.join("bob");
    nix::unistd::mkfifo(&mbox, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    chown(&mbox, OTHER_UID, OTHER_GID);
    assert_deferred_for_the_co_tenant(&w, BOB);
}

/// A co-tenant creates a parent directory of bob's future Maildir in a shared (1777)
/// directory: delivery refuses to put mail where the co-tenant could later move or delete it.
#[test]
fn parent_directory_owned_by_a_co_tenant_is_refused() {
    let mut w = World::create();
    let domain = shared_domain_dir(&w);
    let team = domain.join("team");
    fs::create_dir(&team).unwrap();
    chown(&team, OTHER_UID, OTHER_GID);
    fs::set_permissions(&team, PermissionsExt::from_mode(0o777)).unwrap();
    w.mailbox(ALICE, "example.test/team/alice/");
    w.mailbox(BOB, "example.test/team/bob");
    for rcpt in [ALICE, BOB] {
        assert_deferred_for_the_co_tenant(&w, rcpt);
    }
    assert!(
        names(&team).is_empty(),
        "nothing was put in the co-tenant's directory"
    );
}

/// CR, LF and NUL in the envelope would become extra headers (Return-Path, Delivered-To) or a
/// broken From_ line: refused by the engine and by the CLI, and nothing is written.
#[test]
fn addresses_with_cr_lf_or_nul_never_reach_the_mailbox() {
    let w = world();
    for sender in [
        "evil@origin.test\nX-Injected: yes",
        "evil@origin.test\rX-Injected: yes",
        "e\0vil@origin.test",
    ] {
        let outcome = w.deliver_with(BOB, sender, MESSAGE, &options());
        assert_ne!(code(&outcome.status), "2.0.0", "{sender:?}");
    }
    for rcpt in [
        "bob+x\nX-Injected: yes@example.test",
        "bob+\r@example.test",
        "bob+\0@example.test",
    ] {
        let outcome = w.deliver(rcpt, MESSAGE);
        assert_ne!(code(&outcome.status), "2.0.0", "{rcpt:?}");
    }
    let resources = w.resources(&[mailbox("bob", "address: bob@example.test, format: Mbox")]);
    let (_, _, status) = w.cli(
        &resources,
        &[
            "-f",
            "evil@origin.test\nX-Injected: yes",
            "bob@example.test",
        ],
        MESSAGE,
    );
    assert_ne!(status, 0, "CLI sender with LF");
    let (_, _, status) = w.cli(
        &resources,
        &["--", "bob+\nX-Injected: yes@example.test"],
        MESSAGE,
    );
    assert_ne!(status, 0, "CLI recipient with LF");
    let (_, _, status) = w.cli(
        &resources,
        &[
            "--original-recipient",
            "x@example.test\nX-Injected: yes",
            "bob@example.test",
        ],
        MESSAGE,
    );
    assert_ne!(status, 0, "CLI original recipient with LF");
    let mbox = fs::read(w.base.join("example.test/bob")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&mbox).contains("X-Injected"),
        "a header was injected:\n{}",
        String::from_utf8_lossy(&mbox)
    );
}

/// The directory (a ConfigMap anyone with write access to the namespace can replace) lowers
/// `minimumUid`: the agent's own floor still refuses system uids.
#[test]
fn directory_cannot_lower_the_agents_uid_floor() {
    let mut w = world();
    w.directory.settings.minimum_uid = 1;
    let entry = w.mailbox("daemon@example.test", "example.test/daemon");
    entry.uid = 2;
    entry.gid = 2;
    let status = virtmail_agent::deliver::precheck(&w.directory, "daemon@example.test")
        .expect_err("uid 2 is below the agent's floor");
    assert_eq!(code(&status), "4.3.5", "{status}");
    assert!(!w.base.join("example.test/daemon").exists());
}
