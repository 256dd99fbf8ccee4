// RPC handlers are awaited by the runtime: they must be `async fn`.
use cruster::prelude::*;

#[entity]
#[derive(Clone)]
struct Counter;

#[entity_impl]
impl Counter {
    #[rpc]
    pub fn get(&self) -> Result<i64, ClusterError> {
        Ok(0)
    }
}

fn main() {}
