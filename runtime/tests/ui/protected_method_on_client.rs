// A `#[protected]` RPC is dispatchable entity-to-entity, but not on the public client.
use cruster::prelude::*;

#[entity]
#[derive(Clone)]
struct Ledger;

#[entity_impl]
impl Ledger {
    #[rpc]
    #[protected]
    pub async fn internal_sync(&self, value: String) -> Result<(), ClusterError> {
        let _ = value;
        Ok(())
    }
}

async fn call(client: &LedgerClient) -> Result<(), ClusterError> {
    client
        .internal_sync(&EntityId::new("l-1"), &"v".to_string())
        .await
}

fn main() {
    let _ = call;
}
