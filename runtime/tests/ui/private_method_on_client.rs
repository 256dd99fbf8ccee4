// A `#[private]` RPC is a helper: on no client, and not dispatchable.
use cruster::prelude::*;

#[entity]
#[derive(Clone)]
struct Ledger;

#[entity_impl]
impl Ledger {
    #[rpc]
    #[private]
    async fn validate(&self, value: String) -> Result<bool, ClusterError> {
        Ok(!value.is_empty())
    }
}

async fn call(client: &LedgerClient) -> Result<bool, ClusterError> {
    client.validate(&EntityId::new("l-1"), &"v".to_string()).await
}

fn main() {
    let _ = call;
}
