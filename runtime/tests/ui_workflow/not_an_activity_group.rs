use cruster::prelude::*;

#[derive(Clone)]
struct Plain;

#[workflow]
#[derive(Clone)]
struct Composes;

#[workflow_impl(activity_groups(Plain))]
impl Composes {
    async fn execute(&self, request: String) -> Result<String, ClusterError> {
        Ok(request)
    }
}

fn main() {}
