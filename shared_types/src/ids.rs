//! Identifiers: who an entity is, where it lives, and which runner owns it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// The shard group used when an entity type does not name one.
pub const DEFAULT_SHARD_GROUP: &str = "default";

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Creates the identifier from any string.
            pub fn new(value: impl AsRef<str>) -> Self {
                Self(Arc::from(value.as_ref()))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::new(value)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(Arc::from(value))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The kind of an entity (`"Counter"`, `"user"`): selects the handler that serves it.
    ///
    /// ```
    /// use cruster_types::EntityType;
    /// assert_eq!(EntityType::new("Counter").as_str(), "Counter");
    /// ```
    EntityType
);

string_id!(
    /// The identity of one entity instance within its type (`"counter-1"`).
    ///
    /// ```
    /// use cruster_types::EntityId;
    /// let id = EntityId::new("counter-1");
    /// assert_eq!(id.to_string(), "counter-1");
    /// ```
    EntityId
);

/// One shard: a shard group and a number in `0..shards_per_group`.
///
/// Shards are the unit of ownership: each is held by exactly one runner at a time.
///
/// ```
/// use cruster_types::ShardId;
/// let shard = ShardId::new("default", 7);
/// assert_eq!(shard.to_string(), "default:7");
/// assert_eq!("default:7".parse::<ShardId>().unwrap(), shard);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId {
    /// The shard group (isolates entity types from each other's shard space).
    pub group: Arc<str>,
    /// The shard number within the group.
    pub id: u32,
}

impl ShardId {
    /// Creates a shard id.
    pub fn new(group: impl AsRef<str>, id: u32) -> Self {
        Self {
            group: Arc::from(group.as_ref()),
            id,
        }
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.group, self.id)
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardId({}:{})", self.group, self.id)
    }
}

impl FromStr for ShardId {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (group, id) = s
            .rsplit_once(':')
            .ok_or_else(|| ClusterError::MalformedMessage {
                reason: format!("shard id `{s}` is not of the form `group:number`"),
                source: None,
            })?;
        let id = id
            .parse::<u32>()
            .map_err(|e| ClusterError::MalformedMessage {
                reason: format!("shard id `{s}` has a bad shard number"),
                source: Some(Box::new(e)),
            })?;
        Ok(ShardId::new(group, id))
    }
}

/// Where an entity lives: its shard, its type and its id.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct EntityAddress {
    /// The shard the entity id hashes to.
    pub shard_id: ShardId,
    /// The entity type.
    pub entity_type: EntityType,
    /// The entity id.
    pub entity_id: EntityId,
}

impl fmt::Display for EntityAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}",
            self.entity_type, self.entity_id, self.shard_id
        )
    }
}

/// The network address of a runner (`host:port`).
///
/// ```
/// use cruster_types::RunnerAddress;
/// let addr: RunnerAddress = "10.0.0.1:9000".parse().unwrap();
/// assert_eq!(addr.port, 9000);
/// assert!("no-port".parse::<RunnerAddress>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunnerAddress {
    /// Host name or IP address.
    pub host: Arc<str>,
    /// TCP port.
    pub port: u16,
}

impl RunnerAddress {
    /// Creates a runner address.
    pub fn new(host: impl AsRef<str>, port: u16) -> Self {
        Self {
            host: Arc::from(host.as_ref()),
            port,
        }
    }
}

impl Default for RunnerAddress {
    fn default() -> Self {
        RunnerAddress::new("127.0.0.1", 9000)
    }
}

impl fmt::Display for RunnerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for RunnerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunnerAddress({self})")
    }
}

impl FromStr for RunnerAddress {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ClusterError::InvalidConfig {
            field: "runner_address".into(),
            reason: format!("`{s}` is not a `host:port` address: {why}"),
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("missing `:port`"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("port is not a number in 0..=65535"))?;
        Ok(RunnerAddress::new(host, port))
    }
}

/// A runner's number in the cluster, used in [`crate::Snowflake`] ids (10 bits: `0..1024`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct MachineId(u16);

impl MachineId {
    /// The largest machine id that fits in a snowflake.
    pub const MAX: u16 = 1023;

    /// Creates a machine id, failing if it does not fit in 10 bits.
    pub fn new(id: u16) -> Result<Self, ClusterError> {
        if id > Self::MAX {
            return Err(ClusterError::InvalidConfig {
                field: "machine_id".into(),
                reason: format!(
                    "machine id {id} does not fit in 10 bits (max {})",
                    Self::MAX
                ),
            });
        }
        Ok(MachineId(id))
    }

    /// Wraps any number into the valid range (`id % 1024`).
    pub fn wrapping(id: u64) -> Self {
        MachineId((id % (u64::from(Self::MAX) + 1)) as u16)
    }

    /// The numeric value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A named singleton and the shard that decides which runner runs it.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct SingletonAddress {
    /// The shard whose owner runs the singleton.
    pub shard_id: ShardId,
    /// The singleton's cluster-wide unique name.
    pub name: Arc<str>,
}

impl fmt::Display for SingletonAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "singleton {}@{}", self.name, self.shard_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_address_round_trips_through_display() {
        let addr: RunnerAddress = "[::1]:7000".parse().unwrap();
        assert_eq!(&*addr.host, "::1");
        assert_eq!(addr.to_string().parse::<RunnerAddress>().unwrap(), addr);
    }

    #[test]
    fn bad_runner_addresses_are_config_errors() {
        for bad in ["", "host", ":80", "host:99999", "host:x"] {
            let err = bad.parse::<RunnerAddress>().unwrap_err();
            assert!(
                matches!(err, ClusterError::InvalidConfig { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn machine_id_rejects_more_than_ten_bits() {
        assert!(MachineId::new(1023).is_ok());
        assert!(matches!(
            MachineId::new(1024),
            Err(ClusterError::InvalidConfig { .. })
        ));
        assert_eq!(MachineId::wrapping(1025).get(), 1);
    }

    #[test]
    fn shard_id_parse_rejects_garbage() {
        assert!("nocolon".parse::<ShardId>().is_err());
        assert!("g:-1".parse::<ShardId>().is_err());
        assert_eq!("a:b:3".parse::<ShardId>().unwrap(), ShardId::new("a:b", 3));
    }
}
