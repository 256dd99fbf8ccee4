//! The entity examples of the README, run on a real single-node runtime (memory backends),
//! plus the rules of RPC groups, visibility and entity-to-entity calls.
//!
//! `MemoryPool` stands in for the README's `PgPool`: it is only the entities' shared state.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use cruster::prelude::*;
use cruster::single_runner::SingleRunner;
use serde::{Deserialize, Serialize};

/// An in-memory stand-in for a database pool: cheap to clone, shared state behind a lock.
#[derive(Clone, Default)]
struct MemoryPool {
    counters: Arc<Mutex<HashMap<String, i64>>>,
    audit_log: Arc<Mutex<Vec<AuditEntry>>>,
    emails: Arc<Mutex<HashMap<String, String>>>,
}

impl MemoryPool {
    fn add(&self, id: &str, amount: i64) -> i64 {
        let mut counters = self.counters.lock();
        let value = counters.entry(id.to_string()).or_insert(0);
        *value += amount;
        *value
    }

    fn value(&self, id: &str) -> Option<i64> {
        self.counters.lock().get(id).copied()
    }
}

async fn runner() -> anyhow::Result<SingleRunner> {
    Ok(SingleRunner::builder().build().await?)
}

// ---------------------------------------------------------------------------------------
// README: Defining an Entity / Using the Entity
// ---------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct IncrementRequest {
    entity_id: String,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct GetCounterRequest {
    entity_id: String,
}

#[entity]
#[derive(Clone)]
struct Counter {
    pool: MemoryPool,
}

#[entity_impl]
impl Counter {
    // Persisted RPC: at-least-once delivery for writes
    #[rpc(persisted)]
    pub async fn increment(&self, request: IncrementRequest) -> Result<i64, ClusterError> {
        Ok(self.pool.add(&request.entity_id, request.amount))
    }

    // Non-persisted RPC: best-effort delivery for reads
    #[rpc]
    pub async fn get(&self, request: GetCounterRequest) -> Result<i64, ClusterError> {
        Ok(self.pool.value(&request.entity_id).unwrap_or(0))
    }

    /// No request argument: the client takes only the entity id.
    #[rpc]
    pub async fn reset(&self) -> Result<(), ClusterError> {
        self.pool.counters.lock().clear();
        Ok(())
    }

    /// Several arguments travel as a tuple; the client takes each by reference.
    #[rpc(persisted)]
    pub async fn add_to(&self, id: String, amount: i64) -> Result<i64, ClusterError> {
        Ok(self.pool.add(&id, amount))
    }

    /// The instance's own id, from the entity context.
    #[rpc]
    pub async fn whoami(&self) -> Result<String, ClusterError> {
        Ok(self.entity_context()?.address.entity_id.to_string())
    }

    #[rpc]
    pub async fn fail(&self, message: String) -> Result<(), ClusterError> {
        Err(ClusterError::handler(message))
    }
}

#[tokio::test]
async fn readme_counter_increments_and_reads() -> anyhow::Result<()> {
    let runner = runner().await?;
    let pool = MemoryPool::default();

    let counter = Counter { pool: pool.clone() }
        .register(runner.sharding().clone())
        .await?;

    let entity_id = EntityId::new("counter-1");
    let value = counter
        .increment(
            &entity_id,
            &IncrementRequest {
                entity_id: "counter-1".into(),
                amount: 5,
            },
        )
        .await?;
    assert_eq!(value, 5);

    let value = counter
        .get(
            &entity_id,
            &GetCounterRequest {
                entity_id: "counter-1".into(),
            },
        )
        .await?;
    assert_eq!(value, 5);

    runner.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn zero_and_multi_argument_rpcs_round_trip() -> anyhow::Result<()> {
    let runner = runner().await?;
    let pool = MemoryPool::default();
    let counter = Counter { pool: pool.clone() }
        .register(runner.sharding().clone())
        .await?;
    let id = EntityId::new("c-2");

    assert_eq!(counter.add_to(&id, &"x".to_string(), &3).await?, 3);
    assert_eq!(counter.add_to(&id, &"x".to_string(), &4).await?, 7);
    counter.reset(&id).await?;
    assert_eq!(pool.value("x"), None, "reset ran");

    runner.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_handler_sees_its_own_entity_id() -> anyhow::Result<()> {
    let runner = runner().await?;
    let counter = Counter {
        pool: MemoryPool::default(),
    }
    .register(runner.sharding().clone())
    .await?;
    assert_eq!(counter.whoami(&EntityId::new("me-7")).await?, "me-7");
    runner.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_handler_error_reaches_the_caller_as_its_cluster_error() -> anyhow::Result<()> {
    let runner = runner().await?;
    let counter = Counter {
        pool: MemoryPool::default(),
    }
    .register(runner.sharding().clone())
    .await?;
    let err = counter
        .fail(&EntityId::new("c"), &"boom".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::Handler { message } if message == "boom"),
        "{err:?}"
    );
    runner.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_typed_client_exposes_its_entity_client_for_other_delivery_modes() -> anyhow::Result<()>
{
    let runner = runner().await?;
    let pool = MemoryPool::default();
    let counter = Counter { pool: pool.clone() }
        .register(runner.sharding().clone())
        .await?;
    let id = EntityId::new("c-3");
    assert_eq!(counter.entity_client().entity_type().as_str(), "Counter");
    let request_id = counter
        .entity_client()
        .notify_persisted(
            &id,
            "increment",
            &IncrementRequest {
                entity_id: "n".into(),
                amount: 2,
            },
        )
        .await?;
    let value: i64 = counter.entity_client().join_reply(request_id).await?;
    assert_eq!(value, 2);

    // A second client built from the sharding talks to the same entity type.
    let again = CounterClient::new(runner.sharding().clone());
    let value = again
        .get(
            &id,
            &GetCounterRequest {
                entity_id: "n".into(),
            },
        )
        .await?;
    assert_eq!(value, 2);
    runner.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// README: Entity Configuration
// ---------------------------------------------------------------------------------------

#[entity(
    name = "user_settings",
    shard_group = "premium",
    max_idle_time_secs = 300,
    mailbox_capacity = 50,
    concurrency = 4
)]
#[derive(Clone)]
struct Configured {
    pool: MemoryPool,
}

#[entity_impl]
impl Configured {
    #[rpc]
    pub async fn ping(&self) -> Result<String, ClusterError> {
        let _ = &self.pool;
        Ok("pong".into())
    }
}

#[tokio::test]
async fn entity_options_reach_entity_options_and_the_name_routes() -> anyhow::Result<()> {
    use cruster::__private::EntityDefinition;
    let options = <Configured as EntityDefinition>::options();
    assert_eq!(
        options,
        EntityOptions {
            shard_group: Some("premium".into()),
            max_idle_time: Some(std::time::Duration::from_secs(300)),
            mailbox_capacity: Some(50),
            concurrency: Some(4),
        }
    );
    assert_eq!(
        <Configured as EntityDefinition>::entity_type().as_str(),
        "user_settings"
    );
    assert_eq!(
        <Counter as EntityDefinition>::options(),
        EntityOptions::default(),
        "no options: every setting takes the ShardingConfig default"
    );

    let runner = runner().await?;
    let configured = Configured {
        pool: MemoryPool::default(),
    }
    .register(runner.sharding().clone())
    .await?;
    assert_eq!(
        configured.entity_client().entity_type().as_str(),
        "user_settings"
    );
    assert_eq!(configured.ping(&EntityId::new("u-1")).await?, "pong");
    // The raw client addressed by the custom name reaches the same handler.
    let raw = EntityClient::new(runner.sharding().clone(), EntityType::new("user_settings"));
    let pong: String = raw.send(&EntityId::new("u-1"), "ping", &()).await?;
    assert_eq!(pong, "pong");
    runner.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// README: RPC Groups
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AuditEntry {
    action: String,
    sequence: usize,
}

#[derive(Serialize, Deserialize)]
struct LogActionRequest {
    action: String,
}

#[derive(Serialize, Deserialize)]
struct GetAuditLogRequest {
    limit: usize,
}

#[derive(Serialize, Deserialize)]
struct UpdateEmailRequest {
    user_id: String,
    email: String,
}

#[rpc_group]
#[derive(Clone)]
struct Auditable {
    pool: MemoryPool,
}

#[rpc_group_impl]
impl Auditable {
    #[rpc(persisted)]
    pub async fn log_action(&self, request: LogActionRequest) -> Result<AuditEntry, ClusterError> {
        let mut log = self.pool.audit_log.lock();
        let entry = AuditEntry {
            action: request.action,
            sequence: log.len(),
        };
        log.push(entry.clone());
        Ok(entry)
    }

    #[rpc]
    pub async fn get_audit_log(
        &self,
        request: GetAuditLogRequest,
    ) -> Result<Vec<AuditEntry>, ClusterError> {
        let log = self.pool.audit_log.lock();
        Ok(log.iter().take(request.limit).cloned().collect())
    }
}

#[entity]
#[derive(Clone)]
struct User {
    pool: MemoryPool,
}

#[entity_impl(rpc_groups(Auditable))]
impl User {
    #[rpc(persisted)]
    pub async fn update_email(&self, request: UpdateEmailRequest) -> Result<(), ClusterError> {
        self.pool
            .emails
            .lock()
            .insert(request.user_id, request.email);
        Ok(())
    }
}

#[tokio::test]
async fn readme_user_composes_the_auditable_group() -> anyhow::Result<()> {
    let runner = runner().await?;
    let pool = MemoryPool::default();

    // Pass RPC group instances during registration
    let client = User { pool: pool.clone() }
        .register(runner.sharding().clone(), Auditable { pool: pool.clone() })
        .await?;

    // Generated client includes both entity methods and RPC group methods
    let entity_id = EntityId::new("user-1");
    client
        .update_email(
            &entity_id,
            &UpdateEmailRequest {
                user_id: "user-1".into(),
                email: "a@example.com".into(),
            },
        )
        .await?;
    let entry = client
        .log_action(
            &entity_id,
            &LogActionRequest {
                action: "email changed".into(),
            },
        )
        .await?;
    assert_eq!(entry.sequence, 0);
    let log = client
        .get_audit_log(&entity_id, &GetAuditLogRequest { limit: 10 })
        .await?;
    assert_eq!(log, vec![entry]);
    assert_eq!(
        pool.emails.lock().get("user-1").map(String::as_str),
        Some("a@example.com")
    );
    runner.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Two entities sharing one RPC group
// ---------------------------------------------------------------------------------------

#[rpc_group]
#[derive(Clone)]
struct Labelled {
    label: String,
    calls: Arc<Mutex<usize>>,
}

#[rpc_group_impl]
impl Labelled {
    #[rpc]
    pub async fn label(&self) -> Result<String, ClusterError> {
        *self.calls.lock() += 1;
        Ok(self.label.clone())
    }
}

#[entity]
#[derive(Clone)]
struct Cat;

#[entity_impl(rpc_groups(Labelled))]
impl Cat {
    #[rpc]
    pub async fn meow(&self) -> Result<String, ClusterError> {
        Ok("meow".into())
    }
}

#[entity]
#[derive(Clone)]
struct Dog;

#[entity_impl(rpc_groups(Labelled, Auditable))]
impl Dog {}

fn labelled(label: &str) -> Labelled {
    Labelled {
        label: label.into(),
        calls: Arc::default(),
    }
}

#[tokio::test]
async fn two_entities_sharing_a_group_keep_their_dispatch_separate() -> anyhow::Result<()> {
    let runner = runner().await?;
    let cat_group = labelled("cat");
    let dog_group = labelled("dog");
    let cats = Cat
        .register(runner.sharding().clone(), cat_group.clone())
        .await?;
    let dogs = Dog
        .register(
            runner.sharding().clone(),
            dog_group.clone(),
            Auditable {
                pool: MemoryPool::default(),
            },
        )
        .await?;
    let id = EntityId::new("same-id");

    assert_eq!(cats.label(&id).await?, "cat");
    assert_eq!(dogs.label(&id).await?, "dog");
    assert_eq!(dogs.label(&id).await?, "dog");
    assert_eq!(cats.meow(&id).await?, "meow");
    assert_eq!(*cat_group.calls.lock(), 1);
    assert_eq!(*dog_group.calls.lock(), 2);

    // The group's tag is only on the entities that compose it.
    let err = dogs
        .entity_client()
        .send::<_, String>(&id, "meow", &())
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::UnknownTag { .. }), "{err:?}");
    runner.shutdown().await?;
    Ok(())
}

#[entity]
#[derive(Clone)]
struct Clashing;

#[entity_impl(rpc_groups(Labelled))]
impl Clashing {
    /// Same tag as the group's `label`: registering is refused.
    #[rpc]
    pub async fn label(&self) -> Result<String, ClusterError> {
        Ok("mine".into())
    }
}

#[tokio::test]
async fn an_entity_and_its_group_cannot_dispatch_the_same_tag() -> anyhow::Result<()> {
    let runner = runner().await?;
    let err = Clashing
        .register(runner.sharding().clone(), labelled("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::InvalidConfig { reason, .. } if reason.contains("`label`")),
        "{err:?}"
    );
    runner.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// README: Visibility Modifiers, and entity-to-entity calls
// ---------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct QueryRequest {
    key: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Data {
    key: String,
    synced: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct SyncRequest {
    value: String,
}

#[derive(Serialize, Deserialize)]
struct ValidateRequest {
    value: String,
}

#[entity]
#[derive(Clone, Default)]
struct MyEntity {
    synced: Arc<Mutex<Vec<String>>>,
}

#[entity_impl]
impl MyEntity {
    // Public: on generated client, callable by external callers (default for #[rpc])
    #[rpc]
    pub async fn query(&self, req: QueryRequest) -> Result<Data, ClusterError> {
        Ok(Data {
            key: req.key,
            synced: self.synced.lock().clone(),
        })
    }

    // Protected: dispatchable entity-to-entity, but NOT on the generated client
    #[rpc]
    #[protected]
    pub async fn internal_sync(&self, req: SyncRequest) -> Result<(), ClusterError> {
        let valid = self
            .validate(ValidateRequest {
                value: req.value.clone(),
            })
            .await?;
        if !valid {
            return Err(ClusterError::handler("empty value"));
        }
        self.synced.lock().push(req.value);
        Ok(())
    }

    // Private: not dispatchable, not on client -- internal helper only
    #[rpc]
    #[private]
    async fn validate(&self, req: ValidateRequest) -> Result<bool, ClusterError> {
        Ok(!req.value.is_empty())
    }
}

#[entity]
#[derive(Clone)]
struct Replicator;

#[entity_impl]
impl Replicator {
    /// Forwards a value to `MyEntity`'s protected `internal_sync`.
    #[rpc]
    pub async fn replicate(&self, target: String, value: String) -> Result<(), ClusterError> {
        let my_entity = self.client::<MyEntity>()?;
        my_entity
            .internal_sync(&EntityId::new(target), &SyncRequest { value })
            .await
    }
}

#[tokio::test]
async fn a_private_rpc_is_unreachable_by_tag() -> anyhow::Result<()> {
    let runner = runner().await?;
    let client = MyEntity::default()
        .register(runner.sharding().clone())
        .await?;
    let id = EntityId::new("e-1");
    let err = client
        .entity_client()
        .send::<_, bool>(&id, "validate", &ValidateRequest { value: "x".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::UnknownTag { tag, .. } if tag == "validate"),
        "{err:?}"
    );
    runner.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_protected_rpc_is_callable_entity_to_entity() -> anyhow::Result<()> {
    let runner = runner().await?;
    let my_entity = MyEntity::default()
        .register(runner.sharding().clone())
        .await?;
    let replicator = Replicator.register(runner.sharding().clone()).await?;
    let target = EntityId::new("e-2");

    replicator
        .replicate(&EntityId::new("r-1"), &"e-2".to_string(), &"v1".to_string())
        .await?;
    let data = my_entity
        .query(&target, &QueryRequest { key: "k".into() })
        .await?;
    assert_eq!(data.synced, vec!["v1".to_string()]);

    // The private helper still runs when called from inside the entity.
    let err = replicator
        .replicate(&EntityId::new("r-1"), &"e-2".to_string(), &String::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Handler { .. }), "{err:?}");

    // Protected means "not on the typed client", not "unreachable": by tag it dispatches.
    my_entity
        .entity_client()
        .send::<_, ()>(
            &target,
            "internal_sync",
            &SyncRequest { value: "v2".into() },
        )
        .await?;
    runner.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_entity_to_entity_client_is_refused_outside_a_handler() {
    let replicator = Replicator;
    let err = replicator.client::<MyEntity>().unwrap_err();
    assert!(matches!(err, ClusterError::Handler { .. }), "{err:?}");
}

/// Compile-time check: generated futures can be spawned (`Send`).
#[allow(dead_code)]
fn generated_futures_are_send(
    sharding: Arc<ShardingImpl>,
    counter: CounterClient,
    user: UserClient,
) {
    fn is_send<T: Send>(_: T) {}
    let id = EntityId::new("x");
    is_send(
        Counter {
            pool: MemoryPool::default(),
        }
        .register(sharding.clone()),
    );
    is_send(counter.reset(&id));
    is_send(user.log_action(&id, &LogActionRequest { action: "a".into() }));
    is_send(
        User {
            pool: MemoryPool::default(),
        }
        .register(
            sharding,
            Auditable {
                pool: MemoryPool::default(),
            },
        ),
    );
}
