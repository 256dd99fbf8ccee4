// Requests travel as MessagePack: a persisted RPC's request must be serializable.
use cruster::prelude::*;

struct NotSerializable {
    amount: i64,
}

#[entity]
#[derive(Clone)]
struct Counter;

#[entity_impl]
impl Counter {
    #[rpc(persisted)]
    pub async fn increment(&self, request: NotSerializable) -> Result<i64, ClusterError> {
        Ok(request.amount)
    }
}

fn main() {}
