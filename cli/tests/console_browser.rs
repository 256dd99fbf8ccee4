//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/services.sh`).
//!
//! The test serves the admin API of a three-runner `MemoryCluster`, makes a dead letter,
//! loads the console, sees the runners and the dead letter, presses its Retry button and
//! sees it gone (and processed in storage); it also opens a workflow execution's journal. Screenshots go to the test's target folder
//! (`CARGO_TARGET_TMPDIR`): `console-with-dead-letter.png` and `console.png`.
//!
//! Without chromium or chromedriver it prints `SKIPPED` and passes, unless `CI=true`: then
//! it fails, so CI never silently skips it. `CHROMEDRIVER` and `CHROMIUM` override where
//! they are looked for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use cruster::admin::AdminOptions;
use cruster::prelude::*;
use cruster_cli::http_client::HttpClient;
use serde_json::{json, Value};
use support::{eventually, Node, ShipRequest, Work};

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path)).filter(|p| p.exists());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.exists())
}

/// A chromedriver child process; killed (by its own id) when dropped.
struct Driver {
    child: Child,
    client: HttpClient,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebDriver session with a headless Chromium.
struct Session {
    client: HttpClient,
    id: String,
    profile: PathBuf,
}

impl Session {
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = self.client.clone();
        let (method, path) = (method.to_owned(), format!("/session/{}{}", self.id, path));
        let response =
            tokio::task::spawn_blocking(move || client.request(&method, &path, body.as_ref()))
                .await
                .unwrap()
                .unwrap_or_else(|err| panic!("WebDriver request failed: {err}"));
        (response.status, response.body["value"].clone())
    }

    async fn go(&self, url: &str) {
        let (status, value) = self
            .command("POST", "/url", Some(json!({ "url": url })))
            .await;
        assert_eq!(status, 200, "navigating to {url}: {value}");
    }

    /// Every element matching `css` (possibly none).
    async fn find_all(&self, css: &str) -> Vec<String> {
        let body = json!({ "using": "css selector", "value": css });
        let (status, value) = self.command("POST", "/elements", Some(body)).await;
        assert_eq!(status, 200, "finding {css}: {value}");
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    async fn text(&self, element: &str) -> String {
        let (status, value) = self
            .command("GET", &format!("/element/{element}/text"), None)
            .await;
        assert_eq!(status, 200, "{value}");
        value.as_str().unwrap_or_default().to_owned()
    }

    async fn click(&self, element: &str) {
        let (status, value) = self
            .command(
                "POST",
                &format!("/element/{element}/click"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "click: {value}");
    }

    /// Waits (bounded) until `css` matches an element whose text contains `needle`.
    async fn wait_for_text(&self, css: &str, needle: &str) -> bool {
        eventually(Duration::from_secs(20), || async {
            for element in self.find_all(css).await {
                if self.text(&element).await.contains(needle) {
                    return true;
                }
            }
            false
        })
        .await
    }

    async fn screenshot(&self, to: &Path) {
        let (status, value) = self.command("GET", "/screenshot", None).await;
        assert_eq!(status, 200, "screenshot failed");
        let png = decode_base64(value.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).unwrap();
        eprintln!("screenshot saved to {}", to.display());
    }

    async fn close(self) {
        let _ = self.command("DELETE", "", None).await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for quad in clean.chunks(4) {
        let digits: Vec<u32> = quad
            .iter()
            .filter(|c| **c != b'=')
            .map(|c| value(*c))
            .collect();
        let mut bits = 0u32;
        for (i, d) in digits.iter().enumerate() {
            bits |= d << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..digits.len()]);
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver(chromedriver: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let client = HttpClient::new(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .with_timeout(Duration::from_secs(60));
    let driver = Driver { child, client };
    let ready = eventually(Duration::from_secs(20), || async {
        let client = driver.client.clone();
        tokio::task::spawn_blocking(move || client.get("/status"))
            .await
            .unwrap()
            .is_ok_and(|r| r.body["value"]["ready"] == true)
    })
    .await;
    assert!(ready, "chromedriver did not become ready on port {port}");
    driver
}

async fn new_session(driver: &Driver, chromium: &Path) -> Session {
    let profile = std::env::temp_dir().join(format!(
        "cruster-console-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&profile).unwrap();
    let capabilities = json!({
        "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1300",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }},
    });
    let client = driver.client.clone();
    let response = tokio::task::spawn_blocking(move || {
        client.request("POST", "/session", Some(&capabilities))
    })
    .await
    .unwrap()
    .expect("chromedriver answers");
    assert_eq!(response.status, 200, "no session: {}", response.text);
    let id = response.body["value"]["sessionId"]
        .as_str()
        .expect("a session id")
        .to_owned();
    Session {
        client: driver.client.clone(),
        id,
        profile,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_and_retries_a_dead_letter() {
    let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]);
    let chromium = find_program(
        "CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let (Some(chromedriver), Some(chromium)) = (chromedriver, chromium) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "CI=true but chromium or chromedriver is missing: run `bash .ci/services.sh` \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "SKIPPED: chromium or chromedriver not found (bash .ci/services.sh installs them)"
        );
        return;
    };

    let node = Node::cluster(3, AdminOptions::default().allow_actions(true)).await;
    for i in 0..12 {
        node.switches
            .work(
                &EntityId::new(format!("s-{i}")),
                &Work { label: "ok".into() },
            )
            .await
            .unwrap();
    }
    node.shipments
        .execute(&ShipRequest {
            order_id: "console-1".into(),
        })
        .await
        .unwrap();
    let id = node.dead_letter("browser").await;
    node.switch.broken.store(false, Ordering::SeqCst);

    let driver = start_driver(&chromedriver).await;
    let session = new_session(&driver, &chromium).await;
    session.go(&format!("{}/", node.admin_url())).await;

    for runner in 0..3 {
        let address = cruster::testing::MemoryCluster::address(runner).to_string();
        assert!(
            session.wait_for_text("#runners tr.runner", &address).await,
            "the console never listed runner {address}"
        );
    }
    let row = format!("tr.dead-letter[data-request-id=\"{id}\"]");
    assert!(
        session
            .wait_for_text(&row, "switch is broken while doing browser")
            .await,
        "the console never listed dead letter {id}"
    );
    assert!(
        session.wait_for_text("#executions", "console-1").await,
        "the console never listed the workflow execution"
    );
    let executions = session.find_all("#executions tr.execution a").await;
    assert_eq!(executions.len(), 1);
    session.click(&executions[0]).await;
    assert!(
        session
            .wait_for_text("#journal-entries", "send_parcel")
            .await,
        "the console never showed the execution's journal"
    );
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    session
        .screenshot(&shots.join("console-with-dead-letter.png"))
        .await;

    let buttons = session
        .find_all(&format!("button.retry[data-id=\"{id}\"]"))
        .await;
    assert_eq!(buttons.len(), 1, "one Retry button for {id}");
    session.click(&buttons[0]).await;
    let gone = eventually(Duration::from_secs(20), || async {
        session.find_all(&row).await.is_empty()
    })
    .await;
    assert!(gone, "the dead letter is still shown after Retry");
    let (_, body) = node.post(&format!("/api/dead-letters/{id}/retry")).await;
    assert_eq!(body["state"], "processed", "{body}");
    session.screenshot(&shots.join("console.png")).await;

    session.close().await;
    drop(driver);
    node.shutdown().await;
}
