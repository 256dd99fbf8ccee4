// Every problem of an impl block is reported at once, not just the first.
use cruster::prelude::*;

#[entity]
#[derive(Clone)]
struct Counter;

#[entity_impl]
impl Counter {
    #[rpc(durable)]
    pub async fn a(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    #[rpc]
    pub fn b(&mut self) -> Result<(), ClusterError> {
        Ok(())
    }

    #[rpc]
    #[protected]
    #[private]
    pub async fn c(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    #[activity]
    async fn d(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

fn main() {}
