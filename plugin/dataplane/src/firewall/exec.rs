//! Running the firewall tools: fixed argument lists, input on stdin, a deadline.
//! Nothing is ever passed through a shell, so no value from etcd or a request can
//! become a command.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::DataplaneError;

/// How long one tool run may take (iptables waits up to 5 s for the xtables lock).
const DEADLINE: Duration = Duration::from_secs(10);

/// `PATH` when the process has none (as a shell would assume for root).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The first executable `name` in `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `program` from `package`, or the error naming both.
pub fn require(program: &str, package: &str) -> Result<PathBuf, DataplaneError> {
    find_program(program).ok_or_else(|| DataplaneError::MissingProgram {
        program: program.to_string(),
        package: package.to_string(),
    })
}

/// Runs `program args` with `input` on stdin; returns stdout, or the failure with
/// stderr.
pub async fn run(program: &Path, args: &[&str], input: &str) -> Result<String, DataplaneError> {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |status: String, stderr: String| DataplaneError::Command {
        command: command.clone(),
        status,
        stderr,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}"), String::new()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_string();
    let feed = async move {
        // A tool that exits early closes its end; its exit status tells why.
        let _ = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
    };
    let (_, out) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(feed, child.wait_with_output())
    })
    .await
    .map_err(|_| {
        fail(
            format!("timed out after {}s", DEADLINE.as_secs()),
            String::new(),
        )
    })?;
    let out = out.map_err(|e| fail(format!("wait: {e}"), String::new()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(fail(out.status.to_string(), stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn input_goes_to_stdin_and_failures_keep_stderr() {
        let sh = find_program("sh").unwrap();
        let out = run(&sh, &["-c", "cat"], "hello\n").await.unwrap();
        assert_eq!(out, "hello\n");
        let err = run(&sh, &["-c", "echo bad table >&2; exit 3"], "")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} -c echo bad table >&2; exit 3: exit status: 3: bad table",
                sh.display()
            )
        );
    }

    #[test]
    fn a_missing_program_names_its_package() {
        let err = require("brindle-no-such-tool", "nftables").unwrap_err();
        assert!(
            err.to_string()
                .contains("install the Debian package nftables"),
            "{err}"
        );
    }
}
