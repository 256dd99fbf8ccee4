// An RPC returns `Result<T, ClusterError>`: both travel back to the caller.
use cruster::prelude::*;

#[entity]
#[derive(Clone)]
struct Counter;

#[entity_impl]
impl Counter {
    #[rpc]
    pub async fn get(&self) -> i64 {
        0
    }

    #[rpc]
    pub async fn name(&self) -> Result<String, String> {
        Ok("counter".into())
    }

    #[rpc]
    pub async fn reset(&self) {}
}

fn main() {}
