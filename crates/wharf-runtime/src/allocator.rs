//! The server's heap under glibc's malloc. Every thread that allocates while another holds
//! an arena's lock gets an arena of its own (up to eight per core); the blocking threads that
//! mount, unpack and set up networks for starting instances thus spread the server's heap over
//! many arenas, each keeping its freed memory. [`limit_arenas`] caps them before the server
//! starts its threads; [`release_free_memory`] hands free pages back to the kernel.
//!
//! Measured with `wharf-bench instances` (see docs/benchmarks.md).

/// How many malloc arenas the server uses unless `MALLOC_ARENA_MAX` says otherwise.
pub const SERVER_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`SERVER_ARENAS`], unless the environment sets
/// `MALLOC_ARENA_MAX` (glibc reads it itself; an operator's choice wins). Call before the
/// process starts threads.
#[allow(unsafe_code)]
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only changes malloc's tuning parameters; it takes no pointers and is
    // called before the server starts other threads.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, SERVER_ARENAS) };
    if ok != 1 {
        tracing::debug!("mallopt(M_ARENA_MAX) was refused; malloc keeps its default arenas");
    }
}

/// Returns the free memory at the top of malloc's heaps and the free pages inside them to the
/// kernel. Costs a walk over the heaps: call it after bursts (instances started or stopped),
/// not per request.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases memory malloc holds free; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
