//! The key layout under the prefix, and the encoding of values.
//!
//! Decoding never panics: anything unexpected is an `Err` with a description that callers
//! log before skipping the key.

use cruster_runner_storage::Runner;
use cruster_types::{MachineId, RunnerAddress, ShardId};

/// Where each kind of key lives under the prefix.
#[derive(Debug)]
pub(crate) struct KeySpace {
    prefix: String,
    runners: String,
    machine_ids: String,
    shards: String,
}

impl KeySpace {
    pub(crate) fn new(mut prefix: String) -> Self {
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        KeySpace {
            runners: format!("{prefix}runners/"),
            machine_ids: format!("{prefix}machine-ids/"),
            shards: format!("{prefix}shards/"),
            prefix,
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix of every runner key.
    pub(crate) fn runners(&self) -> &str {
        &self.runners
    }

    pub(crate) fn runner(&self, address: &RunnerAddress) -> String {
        format!("{}{address}", self.runners)
    }

    /// The prefix of every machine id key.
    pub(crate) fn machine_ids(&self) -> &str {
        &self.machine_ids
    }

    /// Zero-padded so that keys sort by number.
    pub(crate) fn machine_id(&self, id: MachineId) -> String {
        format!("{}{:04}", self.machine_ids, id.get())
    }

    /// The prefix of every shard lock key.
    pub(crate) fn shards(&self) -> &str {
        &self.shards
    }

    pub(crate) fn shard(&self, shard: &ShardId) -> String {
        format!("{}{shard}", self.shards)
    }

    /// The runner a runner key and its value describe.
    pub(crate) fn decode_runner(&self, key: &[u8], value: &[u8]) -> Result<Runner, String> {
        let key = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8".to_string())?;
        let address = key
            .strip_prefix(self.runners.as_str())
            .ok_or_else(|| format!("`{key}` is not under `{}`", self.runners))?;
        let address: RunnerAddress = address
            .parse()
            .map_err(|err| format!("`{address}` is not a runner address: {err}"))?;
        let (machine_id, weight) = decode_registration(value)?;
        Ok(Runner {
            address,
            machine_id,
            weight,
        })
    }

    /// The machine id a machine id key names.
    pub(crate) fn decode_machine_id(&self, key: &[u8]) -> Result<MachineId, String> {
        let key = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8".to_string())?;
        let number = key
            .strip_prefix(self.machine_ids.as_str())
            .ok_or_else(|| format!("`{key}` is not under `{}`", self.machine_ids))?;
        let number: u16 = number
            .parse()
            .map_err(|_| format!("`{number}` is not a machine id number"))?;
        MachineId::new(number).map_err(|err| err.to_string())
    }
}

/// The value of a runner key.
pub(crate) fn encode_registration(machine_id: MachineId, weight: u32) -> String {
    format!("machine_id={};weight={weight}", machine_id.get())
}

fn decode_registration(value: &[u8]) -> Result<(MachineId, u32), String> {
    let text =
        std::str::from_utf8(value).map_err(|_| "the registration is not UTF-8".to_string())?;
    let bad = || format!("`{text}` is not of the form `machine_id=N;weight=W`");
    let (machine, weight) = text.split_once(';').ok_or_else(bad)?;
    let machine = machine.strip_prefix("machine_id=").ok_or_else(bad)?;
    let weight = weight.strip_prefix("weight=").ok_or_else(bad)?;
    let machine: u16 = machine.parse().map_err(|_| bad())?;
    let weight: u32 = weight.parse().map_err(|_| bad())?;
    let machine = MachineId::new(machine).map_err(|err| err.to_string())?;
    Ok((machine, weight))
}

/// The value of a shard lock key and of a machine id key: the holder's address.
pub(crate) fn encode_owner(owner: &RunnerAddress) -> String {
    owner.to_string()
}

pub(crate) fn decode_owner(value: &[u8]) -> Result<RunnerAddress, String> {
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8".to_string())?;
    text.parse()
        .map_err(|err| format!("`{text}` is not a runner address: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_keys_round_trip() {
        let keys = KeySpace::new("/c".into());
        let address = RunnerAddress::new("10.0.0.1", 9000);
        let machine_id = MachineId::new(17).unwrap_or_else(|_| unreachable!());
        let key = keys.runner(&address);
        assert_eq!(key, "/c/runners/10.0.0.1:9000");
        let value = encode_registration(machine_id, 3);
        let runner = keys.decode_runner(key.as_bytes(), value.as_bytes());
        assert_eq!(
            runner,
            Ok(Runner {
                address,
                machine_id,
                weight: 3
            })
        );
        assert_eq!(keys.machine_id(machine_id), "/c/machine-ids/0017");
        assert_eq!(
            keys.decode_machine_id(keys.machine_id(machine_id).as_bytes()),
            Ok(machine_id)
        );
    }

    #[test]
    fn bad_keys_and_values_are_errors_not_panics() {
        let keys = KeySpace::new("/c/".into());
        let value = encode_registration(MachineId::wrapping(1), 1);
        for (key, value) in [
            (&b"/c/runners/no-port"[..], value.as_bytes()),
            (b"/c/runners/h:1", b"garbage"),
            (b"/c/runners/h:1", b"machine_id=5000;weight=1"),
            (b"/c/runners/\xff", value.as_bytes()),
            (b"/other/h:1", value.as_bytes()),
        ] {
            assert!(keys.decode_runner(key, value).is_err(), "{key:?} decoded");
        }
        assert!(keys.decode_machine_id(b"/c/machine-ids/x").is_err());
        assert!(decode_owner(b"\xff").is_err());
    }
}
