//! [`TcpProxy`]: a TCP forwarder the test controls, placed in front of one runner's gRPC
//! port (the runner advertises the proxy's address) or on one runner's way to a peer
//! (`cruster-node --dial-via`), to cut that runner off from the others while it keeps its
//! storage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards every connection to the runner.
    Forward,
    /// Closes every connection and the listening socket: new connections are refused by
    /// the kernel (`ECONNREFUSED`).
    Refuse,
    /// Closes every connection; new ones are accepted but nothing is ever read or
    /// forwarded (a peer behind a black hole: only the callers' deadlines end their wait).
    Blackhole,
}

/// A proxy from `127.0.0.1:<port>` to a target address. Dropping it closes everything.
pub struct TcpProxy {
    port: u16,
    mode: watch::Sender<ProxyMode>,
    task: JoinHandle<()>,
    /// Connections accepted so far, in any mode.
    accepted: Arc<AtomicU64>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:port` and forwards to `target`.
    pub async fn start(port: u16, target: SocketAddr) -> TcpProxy {
        let listener = bind(port).await;
        let (mode, watching) = watch::channel(ProxyMode::Forward);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(
            Some(listener),
            port,
            target,
            watching,
            accepted.clone(),
        ));
        TcpProxy {
            port,
            mode,
            task,
            accepted,
        }
    }

    /// How many connections it accepted so far (forwarded or black-holed).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The port callers connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches the mode; every existing connection is closed on any change.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the port (again): right after the proxy closed it, a bind can briefly fail.
async fn bind(port: u16) -> TcpListener {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(err) => {
                attempts += 1;
                assert!(
                    attempts < 100,
                    "the proxy cannot bind 127.0.0.1:{port}: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The proxy's control loop: owns the listener and every connection task (a `JoinSet`,
/// so aborting this task closes them all).
async fn serve(
    mut listener: Option<TcpListener>,
    port: u16,
    target: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    accepted_count: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        let current = *mode.borrow_and_update();
        match (current, &listener) {
            (ProxyMode::Refuse, Some(_)) => listener = None,
            (ProxyMode::Forward | ProxyMode::Blackhole, None) => listener = Some(bind(port).await),
            _ => {}
        }
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                // Every connection of the previous mode is closed.
                connections.abort_all();
            }
            accepted = accept(&listener) => {
                let Ok((inbound, _)) = accepted else { continue };
                accepted_count.fetch_add(1, Ordering::Relaxed);
                match current {
                    ProxyMode::Forward => {
                        connections.spawn(forward(inbound, target));
                    }
                    ProxyMode::Blackhole => {
                        // Held open, never read, until the mode changes.
                        connections.spawn(async move {
                            std::future::pending::<()>().await;
                            drop(inbound);
                        });
                    }
                    ProxyMode::Refuse => drop(inbound),
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn accept(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
