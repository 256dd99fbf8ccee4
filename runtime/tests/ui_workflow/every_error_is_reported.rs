use cruster::prelude::*;

#[workflow]
#[derive(Clone)]
struct Broken;

#[workflow_impl(keys = |r: &String| r.clone())]
impl Broken {
    fn execute(&self, request: String) -> Result<String, ClusterError> {
        Ok(request)
    }

    #[activity]
    fn not_async(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    #[activity]
    async fn mutating(&mut self) -> Result<(), ClusterError> {
        Ok(())
    }

    #[activity(retries = 3, backoff = "linear")]
    async fn bad_backoff(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    #[activity(timeout = 5)]
    async fn unknown_option(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

fn main() {}
