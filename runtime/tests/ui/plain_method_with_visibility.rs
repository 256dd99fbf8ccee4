// `#[protected]` / `#[private]` only mean something on an `#[rpc]` method.
use cruster::prelude::*;

#[entity]
#[derive(Clone)]
struct Counter;

#[entity_impl]
impl Counter {
    #[protected]
    fn helper(&self) -> i64 {
        1
    }

    #[private]
    async fn other_helper(&self) -> Result<i64, ClusterError> {
        Ok(2)
    }
}

fn main() {}
