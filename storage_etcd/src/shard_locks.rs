//! Shard locks: acquire, refresh and release with compare-and-swap transactions.
//!
//! Each shard is one key whose value is the holder's address, bound to a lease. A batch of
//! shards goes to etcd as one transaction holding one small nested transaction per shard,
//! so every shard is decided on its own (one contested shard does not fail the others) in
//! a single round trip:
//!
//! ```text
//! if value == me && lease == L   then (nothing: held, and renewed with L)
//! else if value == me            then put(me, L)      (held, moved to L)
//! else if absent (acquire only)  then put(me, L)      (taken)
//! ```

use std::collections::HashSet;
use std::time::Duration;

use cruster_types::{ClusterError, RunnerAddress, ShardId};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::config::EtcdRunnerStorage;
use crate::keys::{decode_owner, encode_owner};

/// Shards per transaction: etcd refuses more than 128 operations in one (`--max-txn-ops`),
/// and nested transactions share that budget.
const SHARDS_PER_TXN: usize = 32;
/// Transactions of one call in flight at once (a 300-shard call is ten of them).
const TXNS_IN_FLIGHT: usize = 8;

/// The lease a batch of locks is bound to.
#[derive(Clone, Copy, Debug)]
enum LockLease {
    /// The registration's lease, just renewed.
    Runner(i64),
    /// A lease granted for this call alone.
    Own(i64),
}

impl LockLease {
    fn id(self) -> i64 {
        match self {
            LockLease::Runner(id) | LockLease::Own(id) => id,
        }
    }
}

fn distinct(shards: &[ShardId]) -> Vec<ShardId> {
    let mut seen = HashSet::new();
    shards
        .iter()
        .filter(|s| seen.insert((*s).clone()))
        .cloned()
        .collect()
}

/// The answer of a nested transaction, if `response` is one.
fn nested(response: Option<&TxnOpResponse>) -> Option<&TxnResponse> {
    match response {
        Some(TxnOpResponse::Txn(txn)) => Some(txn),
        _ => None,
    }
}

impl EtcdRunnerStorage {
    /// The lease locks asked for with `ttl` by `owner` go under: the runner's own lease
    /// when the TTL is the registration's (after one keep-alive round trip proving it is
    /// alive), otherwise a fresh lease for this call.
    async fn lock_lease(
        &self,
        owner: &RunnerAddress,
        ttl: Duration,
    ) -> Result<LockLease, ClusterError> {
        let asked_secs = self.asked_secs(ttl);
        let registration = self.local.lock().registrations.get(owner).copied();
        if let Some(reg) = registration.filter(|r| r.asked_secs == asked_secs) {
            if self.renew_lease(reg.lease).await? {
                return Ok(LockLease::Runner(reg.lease));
            }
            let mut local = self.local.lock();
            if local
                .registrations
                .get(owner)
                .is_some_and(|r| r.lease == reg.lease)
            {
                local.registrations.remove(owner);
            }
        }
        let (lease, _) = self.grant_lease(asked_secs).await?;
        Ok(LockLease::Own(lease))
    }

    /// Binds each of `shards` that is `owner`'s (or free, when `take_free`) to `lease`;
    /// returns those now held.
    async fn bind(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        lease: i64,
        take_free: bool,
    ) -> Result<Vec<ShardId>, ClusterError> {
        let me = encode_owner(owner);
        let mut calls = Vec::new();
        for chunk in shards.chunks(SHARDS_PER_TXN) {
            calls.push(self.bind_chunk(&me, chunk, lease, take_free));
        }
        let answers: Vec<Vec<ShardId>> = stream::iter(calls)
            .buffered(TXNS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// One transaction of [`EtcdRunnerStorage::bind`].
    async fn bind_chunk(
        &self,
        me: &str,
        chunk: &[ShardId],
        lease: i64,
        take_free: bool,
    ) -> Result<Vec<ShardId>, ClusterError> {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|shard| {
                let key = self.keys.shard(shard);
                let put = || {
                    TxnOp::put(
                        key.clone(),
                        me.to_string(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                };
                let mut ours_elsewhere = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, me)])
                    .and_then([put()]);
                if take_free {
                    let free = Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                        .and_then([put()]);
                    ours_elsewhere = ours_elsewhere.or_else([TxnOp::txn(free)]);
                }
                TxnOp::txn(
                    Txn::new()
                        .when([
                            Compare::value(key.clone(), CompareOp::Equal, me),
                            Compare::lease(key.clone(), CompareOp::Equal, lease),
                        ])
                        .or_else([TxnOp::txn(ours_elsewhere)]),
                )
            })
            .collect();
        let txn = Txn::new().and_then(ops);
        let answer = self
            .calls
            .run("take or renew shard locks", |mut client| async move {
                client.txn(txn).await
            })
            .await?;
        let answers = answer.op_responses();
        let mut held = Vec::new();
        for (index, shard) in chunk.iter().enumerate() {
            let Some(same_lease) = nested(answers.get(index)) else {
                continue;
            };
            let won = same_lease.succeeded() || {
                let moved_answers = same_lease.op_responses();
                match nested(moved_answers.first()) {
                    Some(moved) => {
                        moved.succeeded() || {
                            let free_answers = moved.op_responses();
                            nested(free_answers.first()).is_some_and(|free| free.succeeded())
                        }
                    }
                    None => false,
                }
            };
            if won {
                held.push(shard.clone());
            }
        }
        Ok(held)
    }

    pub(crate) async fn do_acquire_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        let shards = distinct(shards);
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.lock_lease(owner, ttl).await?;
        let held = self.bind(owner, &shards, lease.id(), true).await;
        self.drop_unused(lease, &held).await;
        held
    }

    pub(crate) async fn do_refresh_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        let shards = distinct(shards);
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.lock_lease(owner, ttl).await?;
        let held = self.bind(owner, &shards, lease.id(), false).await;
        self.drop_unused(lease, &held).await;
        held
    }

    /// Revokes a lease granted for a call that bound nothing to it.
    async fn drop_unused(&self, lease: LockLease, held: &Result<Vec<ShardId>, ClusterError>) {
        if let LockLease::Own(id) = lease {
            if held.as_ref().map_or(true, Vec::is_empty) {
                self.discard_lease(id).await;
            }
        }
    }

    pub(crate) async fn do_release_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), ClusterError> {
        let keys: Vec<String> = distinct(shards)
            .iter()
            .map(|s| self.keys.shard(s))
            .collect();
        self.delete_if_owned(owner, &keys).await
    }

    /// Deletes each of `keys` whose value is `owner`'s address.
    async fn delete_if_owned(
        &self,
        owner: &RunnerAddress,
        keys: &[String],
    ) -> Result<(), ClusterError> {
        let me = encode_owner(owner);
        let mut calls = Vec::new();
        for chunk in keys.chunks(SHARDS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|key| {
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::value(key.clone(), CompareOp::Equal, me.clone())])
                            .and_then([TxnOp::delete(key.clone(), None::<DeleteOptions>)]),
                    )
                })
                .collect();
            let txn = Txn::new().and_then(ops);
            calls.push(
                self.calls
                    .run("release shard locks", |mut client| async move {
                        client.txn(txn).await.map(|_| ())
                    }),
            );
        }
        stream::iter(calls)
            .buffer_unordered(TXNS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Releases every lock `owner` holds, whatever lease it is bound to.
    pub(crate) async fn release_all_locks_of(
        &self,
        owner: &RunnerAddress,
    ) -> Result<(), ClusterError> {
        let prefix = self.keys.shards().to_string();
        let me = encode_owner(owner);
        let locks = self
            .calls
            .run("list shard locks", |mut client| async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let ours: Vec<String> = locks
            .kvs()
            .iter()
            .filter(|kv| kv.value() == me.as_bytes())
            .filter_map(|kv| kv.key_str().ok().map(str::to_string))
            .collect();
        self.delete_if_owned(owner, &ours).await
    }

    pub(crate) async fn do_shard_owner(
        &self,
        shard: &ShardId,
    ) -> Result<Option<RunnerAddress>, ClusterError> {
        let key = self.keys.shard(shard);
        let found = self
            .calls
            .run("read a shard lock", |mut client| async move {
                client.get(key, None).await
            })
            .await?;
        let Some(kv) = found.kvs().first() else {
            return Ok(None);
        };
        decode_owner(kv.value()).map(Some).map_err(|why| {
            tracing::warn!(%shard, %why, "a shard lock key holds a value that does not decode");
            ClusterError::MalformedMessage {
                reason: format!("the etcd lock of shard {shard} does not name a runner: {why}"),
                source: None,
            }
        })
    }
}
