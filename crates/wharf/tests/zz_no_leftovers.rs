//! Runs after the other test binaries (cargo runs integration test binaries one at a time, in
//! name order, and this one is named to come last): no Wharf mounts, cgroups, network
//! namespaces, links or shim processes may remain on the machine.

use wharf_testsupport::leaks::{Scope, wharf_leftovers};

#[test]
fn nothing_of_wharf_is_left_on_the_machine() {
    assert_eq!(wharf_leftovers(&Scope::All), Vec::<String>::new());
}
