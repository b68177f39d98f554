//! Name lookups in a statically linked brindle-cni. glibc loads the NSS modules that
//! `/etc/nsswitch.conf` names (`systemd`, `resolve`, `mdns4`, ...) with `dlopen`; a
//! static program that loads one maps a second C library beside its own, and calls into
//! it can crash (a static test program did, in `libnss_systemd`'s group lookup on
//! Debian 12). Only `files` and `dns` are built into glibc, so the static plugin keeps
//! the databases it could touch to those two: etcd endpoints given by name resolve
//! through `/etc/hosts` and `/etc/resolv.conf`, as in the reference CNI plugins (Go,
//! whose own resolver reads the same two).

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

/// The databases a lookup of an endpoint (`getaddrinfo`: host and port) or of a user
/// could reach, and the sources kept for each.
const BUILT_IN: [(&CStr, &CStr); 4] = [
    (c"hosts", c"files dns"),
    (c"services", c"files"),
    (c"passwd", c"files"),
    (c"group", c"files"),
];

extern "C" {
    /// glibc (`<nss.h>`): the sources of one database for this process, in place of
    /// what nsswitch.conf says.
    fn __nss_configure_lookup(db: *const c_char, sources: *const c_char) -> c_int;
}

/// In a static build, look names up in glibc's built-in sources only; a dynamic build
/// loads modules safely and keeps nsswitch.conf's. Call before any other thread starts.
pub fn keep_to_built_in_sources() {
    if !cfg!(all(target_env = "gnu", target_feature = "crt-static")) {
        return;
    }
    for (db, sources) in BUILT_IN {
        // SAFETY: two NUL-terminated strings that outlive the call; no other thread
        // exists yet to look a name up meanwhile. A database glibc does not know is
        // refused with -1 and keeps nsswitch.conf's sources, which is no worse.
        unsafe { __nss_configure_lookup(db.as_ptr(), sources.as_ptr()) };
    }
}
