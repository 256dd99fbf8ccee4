use cruster::prelude::*;

#[workflow]
#[derive(Clone)]
struct ByValue;

#[workflow_impl]
impl ByValue {
    async fn execute(self, request: String) -> Result<String, ClusterError> {
        Ok(request)
    }
}

fn main() {}
