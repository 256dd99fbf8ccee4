//! [`PrivatePostgres`]: a throwaway PostgreSQL instance of this test alone, which it may
//! stop and start again (the shared one of `DATABASE_URL` serves other tests at the same
//! time and must never be stopped).
//!
//! Built with Debian's server binaries (`/usr/lib/postgresql/<version>/bin`, or the folder
//! in `CRUSTER_PG_BIN`): `initdb` into a temporary folder, trust authentication, listening
//! on 127.0.0.1 only, on a free port that stays the same across restarts. PostgreSQL
//! refuses to run as root, so as root every command runs as the `postgres` user
//! (`runuser -u postgres --`) in a folder owned by it. Dropping the instance stops it
//! (`-m immediate`) and removes the folder, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running (or stopped) private PostgreSQL instance.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

/// Where the server binaries are, if installed.
fn server_binaries() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CRUSTER_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("pg_ctl").exists().then_some(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    // The newest major version (`15` > `9.6`).
    let major = |bin: &PathBuf| -> u32 {
        bin.parent()
            .and_then(|dir| dir.file_name()?.to_str()?.split('.').next()?.parse().ok())
            .unwrap_or(0)
    };
    versions.sort_by_key(major);
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// Creates and starts an instance on `port`. `None` (with a `SKIPPED` notice) when the
    /// server binaries are not installed, unless `CI=true`, where that is a failure.
    pub async fn start(port: u16) -> Option<PrivatePostgres> {
        let Some(bin) = server_binaries() else {
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!(
                    "CI=true but PostgreSQL's server binaries (initdb, pg_ctl) are not \
                     installed under /usr/lib/postgresql/*/bin: install the `postgresql` \
                     package (.ci/services.sh does) or point CRUSTER_PG_BIN at them"
                );
            }
            eprintln!(
                "\n==============================================================\n\
                 SKIPPED: PostgreSQL's server binaries (initdb, pg_ctl) are not installed\n\
                 (looked under /usr/lib/postgresql/*/bin and CRUSTER_PG_BIN), so the\n\
                 PostgreSQL-outage scenario did not run.\n\
                 ==============================================================\n"
            );
            return None;
        };
        let dir =
            std::env::temp_dir().join(format!("cruster-private-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres_user = is_root();
        let instance = PrivatePostgres {
            bin,
            dir,
            port,
            as_postgres_user,
        };
        if as_postgres_user {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&instance.dir)
                .status()
                .unwrap();
            assert!(chown.success(), "chown postgres {}", instance.dir.display());
        }
        let data = instance.data();
        instance
            .run(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
            )
            .await;
        instance.start_again().await;
        Some(instance)
    }

    /// The URL of its `postgres` database, as the `postgres` superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it at once, as a crash would (`pg_ctl stop -m immediate`): every connection
    /// is cut, nothing is flushed beyond what was committed.
    pub async fn stop_immediately(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .await;
    }

    /// Starts it (again) on the same port, and waits until it accepts connections.
    pub async fn start_again(&self) {
        let data = self.data();
        let log = self.dir.join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await;
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir(&self.dir);
        command
    }

    /// Runs one of the server's programs to completion (bounded), failing the test with
    /// its output if it fails.
    async fn run(&self, program: &str, args: &[&str]) {
        let mut command = tokio::process::Command::from(self.command(program));
        command.args(args).kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(90), command.output())
            .await
            .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within 90 s"))
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}\n{}\nserver log: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            read_log(&self.dir.join("postgres.log"))
        );
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|_| "(none)".into())
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap_or_default()])
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
