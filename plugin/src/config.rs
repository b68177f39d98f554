//! Settings every brindle binary shares: how to reach etcd and which node this is.
//! Every flag has a `BRINDLE_*` environment variable, so containers and Marathon or
//! compose files can configure by ENV.
//!
//! Passwords can come from a file (`--etcd-password-file`), so that none sits in argv,
//! `/proc/PID/cmdline` or the environment; they are never printed: [`Secret`] and
//! [`EtcdArgs`] show `<redacted>` in their `Debug`.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use brindle_ipam::{EtcdConfig, EtcdStore, Ipam};
use clap::Args;

/// Longest password file read; anything longer is refused (a wrong path such as
/// `/dev/zero` gives an error, not an endless read).
pub const MAX_PASSWORD_FILE: u64 = 4096;

/// A password or other secret: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a password file gave no password; every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("password file {path} is empty")]
    Empty { path: String },
    #[error("password file {path} is longer than {MAX_PASSWORD_FILE} bytes")]
    TooLong { path: String },
    #[error("password file {path} is not UTF-8 text")]
    NotText { path: String },
}

/// The password in the file at `path`: its whole content less one trailing newline
/// (`\n` or `\r\n`), so `echo pw > file` works. A missing, unreadable, empty, oversized
/// or non-UTF-8 file is an error naming the path.
pub fn read_password_file(path: &Path) -> Result<Secret, PasswordFileError> {
    let shown = || path.display().to_string();
    let read = |source| PasswordFileError::Read {
        path: shown(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PASSWORD_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE {
        return Err(PasswordFileError::TooLong { path: shown() });
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| PasswordFileError::NotText { path: shown() })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(PasswordFileError::Empty { path: shown() });
    }
    Ok(Secret(text))
}

/// Flags for reaching etcd.
#[derive(Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "BRINDLE_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of all brindle records.
    #[arg(
        long,
        env = "BRINDLE_ETCD_PREFIX",
        default_value = brindle_ipam::keys::DEFAULT_PREFIX,
        global = true
    )]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd.
    #[arg(long, env = "BRINDLE_ETCD_CA_FILE", global = true)]
    pub etcd_ca_file: Option<String>,
    /// Client certificate (PEM).
    #[arg(long, env = "BRINDLE_ETCD_CERT_FILE", global = true)]
    pub etcd_cert_file: Option<String>,
    /// Client key (PEM).
    #[arg(long, env = "BRINDLE_ETCD_KEY_FILE", global = true)]
    pub etcd_key_file: Option<String>,
    /// etcd user (with --etcd-password-file or --etcd-password).
    #[arg(long, env = "BRINDLE_ETCD_USERNAME", global = true)]
    pub etcd_username: Option<String>,
    /// etcd password; visible in `ps`: prefer --etcd-password-file.
    #[arg(
        long,
        env = "BRINDLE_ETCD_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub etcd_password: Option<Secret>,
    /// File holding the etcd password (one trailing newline is ignored).
    #[arg(
        long,
        env = "BRINDLE_ETCD_PASSWORD_FILE",
        value_name = "PATH",
        global = true,
        conflicts_with = "etcd_password"
    )]
    pub etcd_password_file: Option<PathBuf>,
}

impl std::fmt::Debug for EtcdArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            etcd_endpoints,
            etcd_prefix,
            etcd_ca_file,
            etcd_cert_file,
            etcd_key_file,
            etcd_username,
            etcd_password,
            etcd_password_file,
        } = self;
        f.debug_struct("EtcdArgs")
            .field("etcd_endpoints", etcd_endpoints)
            .field("etcd_prefix", etcd_prefix)
            .field("etcd_ca_file", etcd_ca_file)
            .field("etcd_cert_file", etcd_cert_file)
            .field("etcd_key_file", etcd_key_file)
            .field("etcd_username", etcd_username)
            .field("etcd_password", etcd_password)
            .field("etcd_password_file", etcd_password_file)
            .finish()
    }
}

impl EtcdArgs {
    /// The store settings; reads `--etcd-password-file`.
    pub fn etcd_config(&self) -> Result<EtcdConfig, PasswordFileError> {
        let password = match (&self.etcd_password_file, &self.etcd_password) {
            (Some(path), _) => Some(read_password_file(path)?),
            (None, p) => p.clone(),
        };
        Ok(EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            username: self.etcd_username.clone(),
            password: password.map(|p| p.0),
        })
    }

    /// Connect and build the IPAM service.
    pub async fn ipam(&self) -> anyhow::Result<Ipam<EtcdStore>> {
        let store = EtcdStore::connect(&self.etcd_config()?).await?;
        Ok(Ipam::new(store, &self.etcd_prefix))
    }
}

/// This machine's hostname, the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
    }

    fn file(dir: &Path, name: &str, content: &[u8]) -> String {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    #[test]
    fn password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let read = |content: &[u8]| read_password_file(Path::new(&file(dir.path(), "pw", content)));
        assert_eq!(read(b"s3cret\n").unwrap().expose(), "s3cret");
        assert_eq!(read(b"s3cret").unwrap().expose(), "s3cret");
        assert_eq!(read(b"s3cret\r\n").unwrap().expose(), "s3cret");
        assert_eq!(read(b"s3cret\n\n").unwrap().expose(), "s3cret\n");
        assert_eq!(read(b" sp ace \n").unwrap().expose(), " sp ace ");
    }

    #[test]
    fn bad_password_files_are_one_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (file(dir.path(), "empty", b""), "is empty"),
            (file(dir.path(), "newline", b"\n"), "is empty"),
            (file(dir.path(), "binary", b"\xff\xfe"), "not UTF-8"),
            (
                file(
                    dir.path(),
                    "huge",
                    &vec![b'a'; MAX_PASSWORD_FILE as usize + 1],
                ),
                "longer than 4096 bytes",
            ),
            (
                dir.path().join("missing").display().to_string(),
                "No such file",
            ),
            (
                dir.path().display().to_string(),
                "cannot read password file",
            ),
        ];
        for (path, why) in cases {
            let e = read_password_file(Path::new(&path))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&path) && e.contains(why), "{path}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        assert!(read_password_file(Path::new(&file(dir.path(), "max", &[b'a'; 4096]))).is_ok());
    }

    #[test]
    fn password_file_flag_feeds_the_store_config_and_conflicts_with_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let pw = file(dir.path(), "pw", b"fr0m-file\n");
        let f = parse(&["--etcd-username", "root", "--etcd-password-file", &pw]).unwrap();
        let c = f.etcd.etcd_config().unwrap();
        assert_eq!(c.username.as_deref(), Some("root"));
        assert_eq!(c.password.as_deref(), Some("fr0m-file"));

        let f = parse(&["--etcd-password", "fr0m-flag"]).unwrap();
        assert_eq!(
            f.etcd.etcd_config().unwrap().password.as_deref(),
            Some("fr0m-flag")
        );
        assert_eq!(
            parse(&[]).unwrap().etcd.etcd_config().unwrap().password,
            None
        );

        let e = parse(&["--etcd-password", "x", "--etcd-password-file", &pw]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);

        let missing = dir.path().join("nope").display().to_string();
        let f = parse(&["--etcd-password-file", &missing]).unwrap();
        let e = f.etcd.etcd_config().unwrap_err().to_string();
        assert!(e.contains(&missing), "{e}");
    }

    #[test]
    fn debug_never_shows_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let pw = file(dir.path(), "pw", b"fr0m-file\n");
        let f = parse(&["--etcd-password", "fr0m-flag", "--etcd-username", "root"]).unwrap();
        let shown = format!("{f:?} {:?}", f.etcd.etcd_config().unwrap());
        assert!(!shown.contains("fr0m-flag"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("root"),
            "{shown}"
        );
        let f = parse(&["--etcd-password-file", &pw]).unwrap();
        let shown = format!("{f:?} {:#?}", f.etcd.etcd_config().unwrap());
        assert!(!shown.contains("fr0m-file"), "{shown}");
        assert!(shown.contains(&pw), "the path is no secret: {shown}");
        assert_eq!(format!("{:?}", Secret::new("x")), "<redacted>");
    }
}
