//! Registrations: leases, machine ids, runner keys; keep-alive, unregister, listing.
//!
//! A registration is a lease with two keys bound to it: the runner key and the machine id
//! key it claimed. Both are written in one transaction that succeeds only if the machine id
//! key is free (or already names this runner), so machine ids are unique among live runners.

use std::collections::BTreeSet;
use std::time::Duration;

use cruster_runner_storage::Runner;
use cruster_types::{ClusterError, MachineId, RunnerAddress};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use rand::seq::IndexedRandom;

use crate::calls::is_lease_not_found;
use crate::config::{EtcdRunnerStorage, Registration};
use crate::keys::{encode_owner, encode_registration};

/// How many times a registration retries when another runner claimed the machine id it
/// picked at the same moment.
const CLAIM_ATTEMPTS: usize = 64;

impl EtcdRunnerStorage {
    /// Grants a lease for `asked_secs`; returns its id and the TTL etcd granted.
    pub(crate) async fn grant_lease(&self, asked_secs: i64) -> Result<(i64, i64), ClusterError> {
        let granted = self
            .calls
            .run("grant a lease", |mut client| async move {
                client.lease_grant(asked_secs, None).await
            })
            .await?;
        self.local
            .lock()
            .granted_secs
            .insert(asked_secs, granted.ttl());
        Ok((granted.id(), granted.ttl()))
    }

    /// One keep-alive round trip: `Ok(true)` if etcd renewed the lease, `Ok(false)` if it
    /// no longer knows it.
    pub(crate) async fn renew_lease(&self, lease: i64) -> Result<bool, ClusterError> {
        let answer = self
            .calls
            .run_raw("renew a lease", |mut client| async move {
                client.lease_keep_alive(lease).await.map(|_| ())
            })
            .await?;
        match answer {
            Ok(()) => Ok(true),
            Err(err) if is_lease_not_found(&err) => Ok(false),
            Err(err) => Err(self.calls.failed("renew a lease", err)),
        }
    }

    /// Revokes a lease (deleting its keys); a lease etcd no longer knows is fine.
    pub(crate) async fn revoke_lease(&self, lease: i64) -> Result<(), ClusterError> {
        let answer = self
            .calls
            .run_raw("revoke a lease", |mut client| async move {
                client.lease_revoke(lease).await.map(|_| ())
            })
            .await?;
        match answer {
            Ok(()) => Ok(()),
            Err(err) if is_lease_not_found(&err) => Ok(()),
            Err(err) => Err(self.calls.failed("revoke a lease", err)),
        }
    }

    /// Revokes a lease nobody uses, logging rather than failing.
    pub(crate) async fn discard_lease(&self, lease: i64) {
        if let Err(err) = self.revoke_lease(lease).await {
            tracing::warn!(%err, lease, "could not revoke an unused etcd lease; it will expire");
        }
    }

    pub(crate) async fn do_register(
        &self,
        address: &RunnerAddress,
        weight: u32,
        ttl: Duration,
    ) -> Result<MachineId, ClusterError> {
        let asked_secs = self.asked_secs(ttl);
        // Re-registering a live runner with the same TTL keeps its lease (and so its locks).
        let known = self.local.lock().registrations.get(address).copied();
        let reused = match known {
            Some(reg) if reg.asked_secs == asked_secs && self.renew_lease(reg.lease).await? => {
                Some(reg.lease)
            }
            _ => None,
        };
        let lease = match reused {
            Some(lease) => lease,
            None => self.grant_lease(asked_secs).await?.0,
        };
        match self.claim(address, weight, lease).await {
            Ok(machine_id) => {
                self.local
                    .lock()
                    .registrations
                    .insert(address.clone(), Registration { lease, asked_secs });
                Ok(machine_id)
            }
            Err(err) => {
                if reused.is_none() {
                    self.discard_lease(lease).await;
                }
                Err(err)
            }
        }
    }

    /// Claims a machine id and writes the runner key, both bound to `lease`.
    async fn claim(
        &self,
        address: &RunnerAddress,
        weight: u32,
        lease: i64,
    ) -> Result<MachineId, ClusterError> {
        let runner_key = self.keys.runner(address);
        let owner = encode_owner(address);
        // The id this runner already has, if its registration is still live.
        let current = self
            .calls
            .run("read a runner key", |mut client| {
                let key = runner_key.clone();
                async move { client.get(key, None).await }
            })
            .await?
            .kvs()
            .first()
            .and_then(|kv| self.keys.decode_runner(kv.key(), kv.value()).ok())
            .map(|runner| runner.machine_id);

        for attempt in 0..CLAIM_ATTEMPTS {
            let (machine_id, keep_current) = match current.filter(|_| attempt == 0) {
                Some(id) => (id, true),
                None => (self.pick_free_machine_id(attempt).await?, false),
            };
            let machine_key = self.keys.machine_id(machine_id);
            // Free, or already naming this runner (its own id, kept across re-registration).
            let free_or_ours = if keep_current {
                Compare::value(machine_key.clone(), CompareOp::Equal, owner.clone())
            } else {
                Compare::version(machine_key.clone(), CompareOp::Equal, 0)
            };
            let with_lease = || Some(PutOptions::new().with_lease(lease));
            let txn = Txn::new().when([free_or_ours]).and_then([
                TxnOp::put(machine_key, owner.clone(), with_lease()),
                TxnOp::put(
                    runner_key.clone(),
                    encode_registration(machine_id, weight),
                    with_lease(),
                ),
            ]);
            let claimed = self
                .calls
                .run("claim a machine id", |mut client| async move {
                    client.txn(txn).await
                })
                .await?
                .succeeded();
            if claimed {
                return Ok(machine_id);
            }
        }
        Err(ClusterError::PersistenceError {
            reason: format!(
                "runner {address} could not claim a machine id in {CLAIM_ATTEMPTS} attempts: \
                 other runners kept taking the free ones; retry"
            ),
            source: None,
        })
    }

    /// The lowest free machine id on the first attempt, a random free one afterwards (so
    /// runners registering together stop picking the same one).
    async fn pick_free_machine_id(&self, attempt: usize) -> Result<MachineId, ClusterError> {
        let prefix = self.keys.machine_ids().to_string();
        let taken = self
            .calls
            .run("list machine ids", |mut client| async move {
                client
                    .get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await
            })
            .await?;
        let taken: BTreeSet<u16> = taken
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.decode_machine_id(kv.key()) {
                Ok(id) => Some(id.get()),
                Err(why) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), %why, "skipping a machine id key that does not decode");
                    None
                }
            })
            .collect();
        let free: Vec<u16> = (0..=MachineId::MAX)
            .filter(|id| !taken.contains(id))
            .collect();
        let pick = if attempt == 0 {
            free.first()
        } else {
            free.choose(&mut rand::rng())
        };
        match pick {
            Some(id) => MachineId::new(*id),
            None => Err(ClusterError::InvalidConfig {
                field: "machine_id".into(),
                reason: format!(
                    "all {} machine ids are taken by live runners under `{}`: no more runners \
                     fit in this cluster",
                    u32::from(MachineId::MAX) + 1,
                    self.keys.prefix()
                ),
            }),
        }
    }

    /// The lease of `address`'s registration: the one this instance granted, or else the
    /// one its runner key is bound to (a registration made by another instance).
    async fn registration_lease(
        &self,
        address: &RunnerAddress,
    ) -> Result<Option<Registration>, ClusterError> {
        if let Some(reg) = self.local.lock().registrations.get(address).copied() {
            return Ok(Some(reg));
        }
        let key = self.keys.runner(address);
        let found = self
            .calls
            .run("read a runner key", |mut client| async move {
                client.get(key, None).await
            })
            .await?;
        Ok(found.kvs().first().map(|kv| Registration {
            lease: kv.lease(),
            asked_secs: 0,
        }))
    }

    pub(crate) async fn do_keep_alive(
        &self,
        address: &RunnerAddress,
    ) -> Result<bool, ClusterError> {
        let Some(reg) = self.registration_lease(address).await? else {
            return Ok(false);
        };
        if reg.lease == 0 {
            return Ok(false);
        }
        let alive = self.renew_lease(reg.lease).await?;
        if !alive {
            let mut local = self.local.lock();
            if local
                .registrations
                .get(address)
                .is_some_and(|r| r.lease == reg.lease)
            {
                local.registrations.remove(address);
            }
        }
        Ok(alive)
    }

    pub(crate) async fn do_unregister(&self, address: &RunnerAddress) -> Result<(), ClusterError> {
        let local = self.local.lock().registrations.remove(address);
        let key = self.keys.runner(address);
        let stored = self
            .calls
            .run("read a runner key", |mut client| async move {
                client.get(key, None).await
            })
            .await?
            .kvs()
            .first()
            .map(|kv| kv.lease());
        let mut leases: BTreeSet<i64> = local.map(|r| r.lease).into_iter().collect();
        leases.extend(stored.filter(|lease| *lease != 0));
        for lease in leases {
            self.revoke_lease(lease).await?;
        }
        // Locks bound to other leases (asked for with another TTL) go too.
        self.release_all_locks_of(address).await
    }

    pub(crate) async fn do_runners(&self) -> Result<Vec<Runner>, ClusterError> {
        Ok(self.list_runners().await?.0)
    }

    /// The live runners sorted by address, and the revision they were read at.
    pub(crate) async fn list_runners(&self) -> Result<(Vec<Runner>, i64), ClusterError> {
        let prefix = self.keys.runners().to_string();
        let listed = self
            .calls
            .run("list runners", |mut client| async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let revision = listed.header().map(|h| h.revision()).unwrap_or(0);
        let mut runners: Vec<Runner> = listed
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.decode_runner(kv.key(), kv.value()) {
                Ok(runner) => Some(runner),
                Err(why) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), %why, "skipping a runner key that does not decode");
                    None
                }
            })
            .collect();
        runners.sort_by(|a, b| a.address.cmp(&b.address));
        Ok((runners, revision))
    }

    pub(crate) async fn do_is_alive(&self, address: &RunnerAddress) -> bool {
        let key = self.keys.runner(address);
        let found = self
            .calls
            .run("read a runner key", |mut client| async move {
                client
                    .get(key, Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await;
        match found {
            Ok(found) => found.count() > 0,
            Err(err) => {
                tracing::warn!(%err, runner = %address, "cannot tell whether the runner is registered; answering not alive");
                false
            }
        }
    }
}
