//! The membership watch: list the runners, then follow the `runners/` keys.
//!
//! One task per watch, owned by the stream handed to the caller: it ends when the caller
//! drops the stream. The task keeps the live runners by address and the revision of the
//! last event it applied. When the etcd stream drops (etcd restarted, connection cut, the
//! test hook), it watches again from that revision + 1, so no event is missed or seen
//! twice; when etcd answers that the revision was compacted meanwhile, it lists again and
//! yields the new list if it differs. It yields one list per event that changes the
//! membership, in revision order.

use std::collections::BTreeMap;
use std::time::Duration;

use cruster_runner_storage::Runner;
use cruster_types::{ClusterError, RunnerAddress};
use etcd_client::{EventType, WatchOptions, WatchStream};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

use crate::config::EtcdRunnerStorage;

/// Lists buffered between the watch task and a slow reader.
const BUFFERED_LISTS: usize = 16;
/// Backoff between failed attempts to list or watch, doubling up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type Lists = mpsc::Sender<Result<Vec<Runner>, ClusterError>>;

/// Why the watch stopped following etcd.
enum Interruption {
    /// The reader dropped the stream: the task ends.
    ReaderGone,
    /// The stream dropped or failed: watch again from the last applied revision.
    Resume,
    /// The revision to resume from was compacted: list again.
    Relist,
}

struct MembershipWatch {
    storage: EtcdRunnerStorage,
    lists: Lists,
    runners: BTreeMap<RunnerAddress, Runner>,
    /// The last list yielded (none before the first).
    yielded: Option<Vec<Runner>>,
    /// The revision of the last event applied (or of the listing).
    revision: i64,
    backoff: Duration,
}

impl EtcdRunnerStorage {
    pub(crate) async fn do_watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError> {
        // The first listing happens here, so a caller learns at once that etcd is down.
        let (first, revision) = self.list_runners().await?;
        let (lists, receiver) = mpsc::channel(BUFFERED_LISTS);
        let mut watch = MembershipWatch {
            storage: self.clone(),
            lists,
            runners: first.into_iter().map(|r| (r.address.clone(), r)).collect(),
            yielded: None,
            revision,
            backoff: FIRST_BACKOFF,
        };
        tokio::spawn(async move {
            if watch.publish().await {
                watch.run().await;
            }
        });
        Ok(stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        })
        .boxed())
    }
}

impl MembershipWatch {
    async fn run(&mut self) {
        loop {
            match self.follow().await {
                Interruption::ReaderGone => return,
                Interruption::Resume => {}
                Interruption::Relist => {
                    if !self.relist().await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the current list if it differs from the last one; `false` once the reader
    /// is gone.
    async fn publish(&mut self) -> bool {
        let list: Vec<Runner> = self.runners.values().cloned().collect();
        if self.yielded.as_ref() == Some(&list) {
            return true;
        }
        self.yielded = Some(list.clone());
        self.lists.send(Ok(list)).await.is_ok()
    }

    /// Waits before the next attempt; `false` if the reader left meanwhile.
    async fn back_off(&mut self) -> bool {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.lists.closed() => false,
        }
    }

    /// Lists again (after a compaction) until it works; `false` if the reader left.
    async fn relist(&mut self) -> bool {
        loop {
            match self.storage.list_runners().await {
                Ok((listed, revision)) => {
                    tracing::info!(
                        revision,
                        "membership watch listed the runners again after a compaction"
                    );
                    self.runners = listed.into_iter().map(|r| (r.address.clone(), r)).collect();
                    self.revision = revision;
                    self.backoff = FIRST_BACKOFF;
                    return self.publish().await;
                }
                Err(err) => {
                    tracing::warn!(%err, "membership watch cannot list the runners; retrying");
                    if !self.back_off().await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits while a test holds watches off etcd; `false` if the reader left.
    async fn wait_while_paused(&mut self) -> bool {
        let mut paused = self.storage.watch_paused.subscribe();
        tokio::select! {
            held = paused.wait_for(|p| !*p) => held.is_ok(),
            _ = self.lists.closed() => false,
        }
    }

    /// Opens a watch from the last applied revision and applies its events until it ends.
    async fn follow(&mut self) -> Interruption {
        if !self.wait_while_paused().await {
            return Interruption::ReaderGone;
        }
        let prefix = self.storage.keys.runners().to_string();
        let start = self.revision + 1;
        let opened = self
            .storage
            .calls
            .run("watch the runners", |mut client| async move {
                client
                    .watch(
                        prefix,
                        Some(WatchOptions::new().with_prefix().with_start_revision(start)),
                    )
                    .await
            })
            .await;
        let stream = match opened {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, revision = start, "membership watch cannot watch etcd; retrying");
                return if self.back_off().await {
                    Interruption::Resume
                } else {
                    Interruption::ReaderGone
                };
            }
        };
        self.apply_events(stream).await
    }

    async fn apply_events(&mut self, mut stream: WatchStream) -> Interruption {
        let mut paused = self.storage.watch_paused.subscribe();
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = self.lists.closed() => return Interruption::ReaderGone,
                _ = paused.wait_for(|p| *p) => {
                    tracing::info!(revision = self.revision, "membership watch cut by the test hook");
                    return Interruption::Resume;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    tracing::warn!(
                        revision = self.revision,
                        "membership watch stream ended; resuming"
                    );
                    return self.resume_after_failure().await;
                }
                Err(err) => {
                    tracing::warn!(%err, revision = self.revision, "membership watch stream failed; resuming");
                    return self.resume_after_failure().await;
                }
            };
            if response.compact_revision() > 0 {
                tracing::warn!(
                    revision = self.revision,
                    compacted_to = response.compact_revision(),
                    "membership watch fell behind a compaction; listing again"
                );
                return Interruption::Relist;
            }
            if response.canceled() {
                tracing::warn!(
                    reason = response.cancel_reason(),
                    "etcd cancelled the membership watch; resuming"
                );
                return self.resume_after_failure().await;
            }
            self.backoff = FIRST_BACKOFF;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => match self.storage.keys.decode_runner(kv.key(), kv.value()) {
                        Ok(runner) => {
                            self.runners.insert(runner.address.clone(), runner);
                        }
                        Err(why) => {
                            tracing::warn!(key = %String::from_utf8_lossy(kv.key()), %why, "skipping a runner key that does not decode");
                        }
                    },
                    EventType::Delete => {
                        let address = kv
                            .key_str()
                            .ok()
                            .and_then(|k| k.strip_prefix(self.storage.keys.runners()))
                            .and_then(|a| a.parse::<RunnerAddress>().ok());
                        if let Some(address) = address {
                            self.runners.remove(&address);
                        }
                    }
                }
                self.revision = self.revision.max(kv.mod_revision());
                if !self.publish().await {
                    return Interruption::ReaderGone;
                }
            }
        }
    }

    async fn resume_after_failure(&mut self) -> Interruption {
        if self.back_off().await {
            Interruption::Resume
        } else {
            Interruption::ReaderGone
        }
    }
}
