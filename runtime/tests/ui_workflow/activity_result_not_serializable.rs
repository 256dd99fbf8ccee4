use cruster::prelude::*;

struct Opaque;

#[workflow]
#[derive(Clone)]
struct Journaled;

#[workflow_impl]
impl Journaled {
    async fn execute(&self, request: String) -> Result<String, ClusterError> {
        self.make().await?;
        Ok(request)
    }

    #[activity]
    async fn make(&self) -> Result<Opaque, ClusterError> {
        Ok(Opaque)
    }
}

fn main() {}
