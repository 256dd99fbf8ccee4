//! The runner directory: which live runner made the snowflakes of each machine id.
//!
//! Owns the map `machine id → runner address` of the current membership, including
//! client-only runners (weight 0), which own no shards but do wait for replies. A runner
//! that stores the final reply of a persisted request reads the request id's machine id
//! here to find the caller's runner and push the reply to it. Reads are a lock-free
//! `ArcSwap` load; the membership watch replaces the whole map.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cruster_runner_storage::Runner;
use cruster_types::{MachineId, RunnerAddress};

#[derive(Default)]
pub(crate) struct RunnerDirectory {
    by_machine: ArcSwap<HashMap<MachineId, RunnerAddress>>,
}

impl RunnerDirectory {
    /// Replaces the directory with the runners of a membership snapshot.
    pub(crate) fn set(&self, runners: &[Runner]) {
        let map = runners
            .iter()
            .map(|runner| (runner.machine_id, runner.address.clone()))
            .collect();
        self.by_machine.store(Arc::new(map));
    }

    /// The live runner holding `machine`, if any.
    pub(crate) fn address_of(&self, machine: MachineId) -> Option<RunnerAddress> {
        self.by_machine.load().get(&machine).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(port: u16, machine: u16, weight: u32) -> Runner {
        Runner {
            address: RunnerAddress::new("127.0.0.1", port),
            machine_id: MachineId::wrapping(u64::from(machine)),
            weight,
        }
    }

    #[test]
    fn finds_the_runner_of_a_machine_id_including_client_only_runners() {
        let directory = RunnerDirectory::default();
        directory.set(&[runner(1, 3, 1), runner(2, 9, 0)]);
        assert_eq!(
            directory.address_of(MachineId::wrapping(9)),
            Some(RunnerAddress::new("127.0.0.1", 2))
        );
        assert_eq!(directory.address_of(MachineId::wrapping(4)), None);
        directory.set(&[runner(1, 3, 1)]);
        assert_eq!(
            directory.address_of(MachineId::wrapping(9)),
            None,
            "left the cluster"
        );
    }
}
