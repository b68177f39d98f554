//! Hands heap memory that was freed back to the system.
//!
//! glibc keeps what a burst of short-lived allocations freed (the listings of a whole
//! cluster at load, a netlink dump of every veth and route per pass) in its arenas,
//! resident, for reuse. With 1,000 local endpoints brindled measured 82 MB resident,
//! 15 MB after one `malloc_trim`. The passes that make such bursts trim after them.
//!
//! brindled also sets two allocator limits at start ([`tune_allocator`]).

/// Returns the free pages of every malloc arena to the system (glibc only; a no-op
/// elsewhere). Costs about a millisecond; called after loads and periodic passes,
/// not per request.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes the allocator's own locks and frees its own
    // unused pages; no memory Rust refers to is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets glibc's malloc up for a small long-running daemon (glibc only; a no-op
/// elsewhere). Call first thing in `main`, before any thread starts.
///
/// - At most two arenas: glibc gives each new thread that allocates an arena of its
///   own, up to 8 per core, and each keeps its own free pages and fragments. brindled
///   has two runtime workers and short-lived blocking threads; more arenas only
///   spread the same heap thinner.
/// - Allocations of 256 KiB and more always come from `mmap`, so they go back to the
///   system when freed. By default glibc raises that threshold (up to 32 MiB) each
///   time such a block is freed, after which the megabyte-sized etcd responses of a
///   load land in the arenas and leave holes there that no trim can return.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's own parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
