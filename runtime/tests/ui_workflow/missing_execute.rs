use cruster::prelude::*;

#[workflow]
#[derive(Clone)]
struct NoEntryPoint;

#[workflow_impl]
impl NoEntryPoint {
    #[activity]
    async fn step(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

fn main() {}
