//! The leak guard finds what its scope left (a mount under the data directory, an instance's
//! network namespace), removes it, and fails the test that dropped it; leftovers outside its
//! scope are not its business. Needs root (mounts and namespaces).

use std::process::Command;

use wharf_testsupport::leaks::{LeakGuard, Leftover, wharf_leftovers};

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn a_guard_removes_its_scopes_leftovers_and_fails_the_test() {
    let dir = tempfile::Builder::new().prefix("wharf-test-").tempdir().unwrap();
    let data = dir.path().join("data");
    let point = data.join("instances/0123456789ab/scratch");
    std::fs::create_dir_all(&point).unwrap();
    let id = format!("{:012x}", u64::from(std::process::id()) << 8);
    // Created first, so whatever fails below, the mount and the namespace are removed.
    let guard = LeakGuard::new(&data);
    guard.instance(&id);
    nix::mount::mount(Some("tmpfs"), &point, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    let netns = format!("wharf-{id}");
    let out = Command::new("ip").args(["netns", "add", &netns]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Outside the scope: another data directory's mount is not this guard's (its own guard
    // removes it).
    let other = tempfile::Builder::new().prefix("wharf-test-").tempdir().unwrap();
    let other_guard = LeakGuard::new(other.path());
    let other_point = other.path().join("mnt");
    std::fs::create_dir(&other_point).unwrap();
    nix::mount::mount(Some("tmpfs"), &other_point, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    let scope = guard.scope();
    assert!(scope.ids.contains(&"0123456789ab".to_owned()), "ids under instances/ are in scope: {scope:?}");
    let found = wharf_leftovers(&scope);
    assert!(found.contains(&Leftover::Mount(point.clone())), "{found:?}");
    assert!(found.contains(&Leftover::Netns(netns.clone())), "{found:?}");
    assert!(!found.iter().any(|l| matches!(l, Leftover::Mount(p) if p.starts_with(other.path()))), "{found:?}");

    let dropped = std::panic::catch_unwind(move || drop(guard));
    let message = dropped.expect_err("a guard with leftovers must fail the test");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("left on the machine (now removed)"), "{message}");
    assert!(message.contains(&format!("netns {netns}")), "{message}");
    assert!(!netns_exists(&netns), "the guard did not remove the namespace");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*point.to_string_lossy()), "the guard did not unmount {}", point.display());

    assert_eq!(other_guard.check_and_clean(), vec![Leftover::Mount(other_point)]);
}

#[test]
fn a_guard_with_nothing_left_is_quiet() {
    let dir = tempfile::Builder::new().prefix("wharf-test-").tempdir().unwrap();
    let guard = LeakGuard::new(dir.path());
    guard.instance("fedcba987654");
    assert_eq!(guard.check_and_clean(), Vec::new());
    drop(guard);
}
