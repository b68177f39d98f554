//! Which dockerd instance is calling, and whether an earlier one is still running.
//!
//! Every address the driver hands out is tagged with the identity of the dockerd that
//! asked for it: `PID:STARTTIME`, the start time (clock ticks since boot, field 22 of
//! `/proc/PID/stat`) guarding against PID reuse. A dockerd that no longer runs can never
//! send the `ReleaseAddress` for its addresses; that is what lets the driver recover
//! addresses leaked by a daemon restart during which brindled was unreachable
//! (calico#746) without ever taking an address from a daemon that may still free it.

/// The identity of process `pid`, or `None` if it does not exist (or is not visible).
pub fn identity(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_time(&stat).map(|start| format!("{pid}:{start}"))
}

/// Whether the process an [`identity`] names is still running.
pub fn alive(id: &str) -> bool {
    let Some(pid) = id.split_once(':').and_then(|(p, _)| p.parse::<i32>().ok()) else {
        // Not an identity we wrote: assume alive, the safe answer.
        return true;
    };
    identity(pid).as_deref() == Some(id)
}

/// Field 22 (`starttime`) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so count from the last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; starttime is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_past_odd_command_names() {
        let stat = "4242 (dock erd) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 12 0 987654 1000000 100";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = identity(std::process::id() as i32).expect("own /proc entry");
        assert!(alive(&me));
        let (pid, start) = me.split_once(':').unwrap();
        let other_start: u64 = start.parse::<u64>().unwrap() + 1;
        assert!(!alive(&format!("{pid}:{other_start}")));
        assert!(!alive("999999999:1"));
        assert!(alive("not-an-identity"));
    }
}
