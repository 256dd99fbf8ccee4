//! Pins that the public handles and futures users hold across `.await`s and threads are
//! `Send + Sync` (or `Send` for futures), so a regression is a compile error here.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use cruster::clock::Clock;
use cruster::prelude::*;
use cruster::testing::{MemoryCluster, VirtualClock};
use cruster::types::{EntityId, Snowflake};

fn send_sync<T: Send + Sync>(_: &T) {}
fn send<T: Send>(_: &T) {}

fn handles_are_send_and_sync(
    sharding: Arc<ShardingImpl>,
    client: EntityClient,
    runner: SingleRunner,
    cluster: MemoryCluster,
    metrics: ClusterMetrics,
    config: ShardingConfig,
    error: ClusterError,
) {
    send_sync(&sharding);
    send_sync(&client);
    send_sync(&runner);
    send_sync(&cluster);
    send_sync(&metrics);
    send_sync(&config);
    send_sync(&error);
}

fn clocks_and_their_futures_are_send(clock: Clock, virtual_clock: VirtualClock) {
    send_sync(&clock);
    send_sync(&virtual_clock);
    send(&clock.sleep(std::time::Duration::from_secs(1)));
    send(&clock.sleep_until(chrono::Utc::now()));
    send(&virtual_clock.advance(std::time::Duration::from_secs(1)));
    send(&virtual_clock.advance_to(chrono::Utc::now()));
}

async fn futures_are_send(sharding: Arc<ShardingImpl>, client: EntityClient, runner: SingleRunner) {
    let id = EntityId::new("x");
    send(&client.send::<_, u64>(&id, "t", &1u64));
    send(&client.send_persisted::<_, u64>(&id, "t", &1u64, false));
    send(&client.notify(&id, "t", &1u64));
    send(&client.notify_persisted(&id, "t", &1u64));
    send(&client.send_at::<_, u64>(&id, "t", &1u64, chrono::Utc::now()));
    send(&client.send_stream::<_, u64>(&id, "t", &1u64));
    send(&client.poll_reply::<u64>(Snowflake(1)));
    send(&client.join_reply::<u64>(Snowflake(1)));
    send(&sharding.start());
    send(&sharding.shutdown());
    send(&runner.shutdown());
    send(&SingleRunner::builder().build());
    send(&MemoryCluster::builder().build());
    send(&register_singleton(sharding.as_ref(), "s", |_ctx| async {
        Ok(())
    }));
}

#[test]
fn the_pins_compile() {
    // The checks above are compile-time; this test exists so the file is built and run.
    let _ = handles_are_send_and_sync;
    let _ = futures_are_send;
    let _ = clocks_and_their_futures_are_send;
}
