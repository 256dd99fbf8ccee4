// RPCs take `&self`: an entity may handle several requests at once.
use cruster::prelude::*;

#[entity]
#[derive(Clone)]
struct Counter {
    value: i64,
}

#[entity_impl]
impl Counter {
    #[rpc]
    pub async fn increment(&mut self, amount: i64) -> Result<i64, ClusterError> {
        self.value += amount;
        Ok(self.value)
    }
}

fn main() {}
