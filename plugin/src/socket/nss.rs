//! The group and user database (NSS: `/etc/group`, `/etc/passwd`, or LDAP/sssd where
//! configured) through libc's reentrant calls. These may block, so async callers run
//! them on a blocking thread.

use std::ffi::{CStr, CString};
use std::io;

use libc::{c_char, c_int, gid_t, uid_t};

/// Largest buffer the `_r` calls get before we give up (a group listing a few thousand
/// members fits many times over).
const MAX_BUF: usize = 1 << 22;

/// The gid of the group called `name`, `None` when there is no such group.
pub fn group_gid(name: &str) -> io::Result<Option<gid_t>> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in group name"))?;
    let mut buf: Vec<c_char> = vec![0; 1024];
    loop {
        // SAFETY: a plain C struct, filled in by getgrnam_r before it is read.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf's length is passed along.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(grp.gr_gid)),
            libc::ERANGE if buf.len() < MAX_BUF => buf.resize(buf.len() * 2, 0),
            // glibc documents these as "not found" too.
            libc::ENOENT | libc::ESRCH => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Whether the user with `uid` belongs to group `gid`: as its primary group in the
/// user database, or as a supplementary one in the group database. A uid without a
/// user entry belongs to nothing.
pub fn user_in_group(uid: uid_t, gid: gid_t) -> io::Result<bool> {
    let Some((name, primary)) = user(uid)? else {
        return Ok(false);
    };
    if primary == gid {
        return Ok(true);
    }
    Ok(group_list(&name, primary)?.contains(&gid))
}

/// The name and primary gid of `uid`.
fn user(uid: uid_t) -> io::Result<Option<(CString, gid_t)>> {
    let mut buf: Vec<c_char> = vec![0; 1024];
    loop {
        // SAFETY: a plain C struct, filled in by getpwuid_r before it is read.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf's length is passed along.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success pw_name points at a NUL-terminated string in buf.
                let name = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
                return Ok(Some((name, pw.pw_gid)));
            }
            libc::ERANGE if buf.len() < MAX_BUF => buf.resize(buf.len() * 2, 0),
            libc::ENOENT | libc::ESRCH => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Every group of user `name` (whose primary group is `primary`).
fn group_list(name: &CStr, primary: gid_t) -> io::Result<Vec<gid_t>> {
    let mut groups: Vec<gid_t> = vec![0; 64];
    loop {
        let mut n = c_int::try_from(groups.len()).unwrap_or(c_int::MAX);
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(n.min(groups.len()));
            return Ok(groups);
        }
        // -1: too small, and `n` says how many there are.
        let want = n.max(groups.len() * 2);
        if want > MAX_BUF {
            return Err(io::Error::other(format!(
                "getgrouplist: {want} groups for one user"
            )));
        }
        groups.resize(want, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_its_own_group() {
        // Every Linux system has user and group root with id 0.
        assert_eq!(group_gid("root").unwrap(), Some(0));
        assert!(user_in_group(0, 0).unwrap());
    }

    #[test]
    fn unknown_names_are_none() {
        assert_eq!(group_gid("brindle-no-such-group-x9").unwrap(), None);
        assert!(group_gid("a\0b").is_err());
        // A uid without a user entry belongs to nothing.
        assert!(!user_in_group(3_999_999_999, 0).unwrap());
    }
}
