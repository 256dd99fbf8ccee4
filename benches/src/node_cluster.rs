//! [`NodeCluster`]: `cruster-node` runner processes for the cluster benches, each on its
//! own port of 127.0.0.1 in one PostgreSQL schema, killed and restarted on the same address.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use cruster::types::RunnerAddress;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a runner may take from spawn to `READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `cruster-node` binary: `CRUSTER_NODE_BIN` if set, else the one beside this bench's
/// own executable (`cargo build --release -p cruster-tests --bin cruster-node` puts it
/// there for a release bench).
///
/// # Errors
/// When neither exists, naming the command that builds it.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CRUSTER_NODE_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("CRUSTER_NODE_BIN={} is not a file", path.display());
    }
    let beside = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("cruster-node"))
        .context("this executable has no folder")?;
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no cruster-node binary at {}: build it first with \
         `cargo build --release -p cruster-tests --bin cruster-node` (same CARGO_TARGET_DIR), \
         or set CRUSTER_NODE_BIN to its path",
        beside.display()
    )
}

/// A port free on 127.0.0.1 now, below the ephemeral range (a runner restarted on its port
/// must find it free).
fn free_port(taken: &[u16]) -> anyhow::Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    for attempt in 0..1000u32 {
        let port = 20_000 + (seed.wrapping_add(attempt.wrapping_mul(7_919)) % 10_000) as u16;
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found on 127.0.0.1 between 20000 and 30000")
}

/// Runner processes of one cluster; dropping it kills every one still running.
pub struct NodeCluster {
    binary: PathBuf,
    args: Vec<String>,
    log_dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl NodeCluster {
    /// `runners` slots, each with a port; `args` are given to every runner besides
    /// `--listen`. Logs go to `log_dir/runner-<i>.log`.
    ///
    /// # Errors
    /// When no ports are free.
    pub fn new(
        binary: PathBuf,
        args: Vec<String>,
        log_dir: &Path,
        runners: usize,
    ) -> anyhow::Result<NodeCluster> {
        std::fs::create_dir_all(log_dir)?;
        let mut ports = Vec::new();
        for _ in 0..runners {
            ports.push(free_port(&ports)?);
        }
        Ok(NodeCluster {
            binary,
            args,
            log_dir: log_dir.to_path_buf(),
            children: (0..runners).map(|_| None).collect(),
            ports,
        })
    }

    /// The address of runner `i`.
    pub fn address(&self, i: usize) -> RunnerAddress {
        RunnerAddress::new("127.0.0.1", self.ports[i])
    }

    /// Spawns runner `i` and waits until it prints `READY`.
    ///
    /// # Errors
    /// When it cannot start or is not ready in time.
    pub async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let log_path = self.log_dir.join(format!("runner-{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let mut child = Command::new(&self.binary)
            .args(["--listen", &listen])
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("CRUSTER_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let stdout = child.stdout.take().context("the runner's stdout")?;
        self.children[i] = Some(child);
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("READY") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            bail!(
                "runner {i} did not become ready within {READY_TIMEOUT:?}; its log: {}",
                log_path.display()
            );
        }
        // Keep reading its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(())
    }

    /// SIGKILLs runner `i` and waits for it to be gone.
    ///
    /// # Errors
    /// When it was not running.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.children[i]
            .take()
            .with_context(|| format!("runner {i} is not running"))?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// SIGTERMs every runner and waits for them (bounded), then kills what is left.
    pub async fn stop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for child in self.children.iter_mut() {
            if let Some(mut running) = child.take() {
                if tokio::time::timeout(Duration::from_secs(20), running.wait())
                    .await
                    .is_err()
                {
                    let _ = running.start_kill();
                }
            }
        }
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.start_kill();
        }
    }
}
