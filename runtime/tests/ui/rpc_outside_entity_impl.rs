// `#[rpc]` is read by `#[entity_impl]` / `#[rpc_group_impl]`; alone it is an error.
use cruster::prelude::*;

#[rpc]
async fn free_function() -> Result<(), ClusterError> {
    Ok(())
}

fn main() {}
