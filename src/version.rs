//! etcd versions and storage kinds, as written in `version.txt` (`3.4.23/etcd3`).
//!
//! Parsing is strict: a version file that does not say exactly `X.Y.Z/etcdN` is an error that names what
//! was expected, never a guess.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An etcd release version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// A `major.minor` pair: etcd's unit of compatibility (the cluster version is kept per minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minor {
    pub major: u32,
    pub minor: u32,
}

/// Which etcd API the data was written through: the v2 store or the v3 (mvcc) store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Storage {
    Etcd2,
    Etcd3,
}

/// What a data directory holds: the version that last ran it and its storage, `3.4.23/etcd3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EtcdState {
    pub version: Version,
    pub storage: Storage,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not a version: expected X.Y.Z, e.g. 3.4.23")]
    Version(String),
    #[error("{0:?} is not a storage: expected etcd2 or etcd3")]
    Storage(String),
    #[error("{0:?} is not a version/storage pair: expected X.Y.Z/etcdN, e.g. 3.4.23/etcd3")]
    State(String),
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version { major, minor, patch }
    }

    pub const fn minor(self) -> Minor {
        Minor { major: self.major, minor: self.minor }
    }
}

impl Minor {
    pub const fn new(major: u32, minor: u32) -> Self {
        Minor { major, minor }
    }

    /// The minor that etcd can upgrade to in place from this one, `None` past what we know.
    ///
    /// etcd moves one minor at a time; across majors, 2.3 was followed by 3.0.
    pub fn next(self) -> Option<Minor> {
        match (self.major, self.minor) {
            (2, 3) => Some(Minor::new(3, 0)),
            (2, m) if m < 3 => Some(Minor::new(2, m + 1)),
            (3, m) => Some(Minor::new(3, m + 1)),
            _ => None,
        }
    }

    /// The minor just below this one, the inverse of [`Minor::next`].
    pub fn previous(self) -> Option<Minor> {
        match (self.major, self.minor) {
            (3, 0) => Some(Minor::new(2, 3)),
            (_, 0) => None,
            (major, m) => Some(Minor::new(major, m - 1)),
        }
    }
}

impl Storage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Storage::Etcd2 => "etcd2",
            Storage::Etcd3 => "etcd3",
        }
    }
}

impl EtcdState {
    pub const fn new(version: Version, storage: Storage) -> Self {
        EtcdState { version, storage }
    }
}

fn parse_number(part: &str) -> Option<u32> {
    let digits_only = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let no_leading_zero = part == "0" || !part.starts_with('0');
    if digits_only && no_leading_zero && part.len() <= 9 { part.parse().ok() } else { None }
}

impl FromStr for Version {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let numbers: Option<Vec<u32>> = s.split('.').map(parse_number).collect();
        match numbers.as_deref() {
            Some(&[major, minor, patch]) => Ok(Version::new(major, minor, patch)),
            _ => Err(ParseError::Version(s.to_string())),
        }
    }
}

impl FromStr for Storage {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "etcd2" => Ok(Storage::Etcd2),
            "etcd3" => Ok(Storage::Etcd3),
            _ => Err(ParseError::Storage(s.to_string())),
        }
    }
}

impl FromStr for EtcdState {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let state_error = || ParseError::State(s.to_string());
        let (version, storage) = s.split_once('/').ok_or_else(state_error)?;
        Ok(EtcdState {
            version: version.parse().map_err(|_| state_error())?,
            storage: storage.parse().map_err(|_| state_error())?,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl fmt::Display for Minor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for EtcdState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.version, self.storage)
    }
}

macro_rules! string_conversions {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.to_string()
            }
        }
    )*};
}
string_conversions!(Version, Storage, EtcdState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_states() {
        let state: EtcdState = "3.4.23/etcd3".parse().unwrap();
        assert_eq!(state, EtcdState::new(Version::new(3, 4, 23), Storage::Etcd3));
        assert_eq!(state.to_string(), "3.4.23/etcd3");
        assert_eq!("2.2.1/etcd2".parse::<EtcdState>().unwrap().storage, Storage::Etcd2);
    }

    #[test]
    fn rejects_anything_but_the_exact_form() {
        for bad in [
            "",
            "3.4/etcd3",
            "3.4.23",
            "3.4.23/etcd4",
            "3.4.23/etcd3 x",
            " 3.4.23/etcd3",
            "3.4.23/etcd3\n",
            "3.4.x/etcd3",
            "3..4/etcd3",
            "03.4.23/etcd3",
            "3.4.23.1/etcd3",
            "+3.4.23/etcd3",
            "3.4.23/ETCD3",
            "3.4.23//etcd3",
            "99999999999.0.0/etcd3",
        ] {
            assert!(bad.parse::<EtcdState>().is_err(), "{bad:?} parsed");
        }
        assert!("v3.4.23".parse::<Version>().is_err());
        assert!("3.4.-1".parse::<Version>().is_err());
    }

    #[test]
    fn orders_versions_numerically() {
        let mut versions: Vec<Version> =
            ["3.5.16", "3.5.1", "3.10.0", "2.3.7", "3.4.23"].iter().map(|v| v.parse().unwrap()).collect();
        versions.sort();
        let printed: Vec<String> = versions.iter().map(ToString::to_string).collect();
        assert_eq!(printed, ["2.3.7", "3.4.23", "3.5.1", "3.5.16", "3.10.0"]);
    }

    #[test]
    fn steps_minors_across_the_major_boundary() {
        assert_eq!(Minor::new(2, 2).next(), Some(Minor::new(2, 3)));
        assert_eq!(Minor::new(2, 3).next(), Some(Minor::new(3, 0)));
        assert_eq!(Minor::new(3, 5).next(), Some(Minor::new(3, 6)));
        assert_eq!(Minor::new(3, 0).previous(), Some(Minor::new(2, 3)));
        assert_eq!(Minor::new(3, 5).previous(), Some(Minor::new(3, 4)));
        assert_eq!(Minor::new(2, 0).previous(), None);
    }

    #[test]
    fn round_trips_through_json() {
        let state: EtcdState = "3.5.16/etcd3".parse().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, "\"3.5.16/etcd3\"");
        assert_eq!(serde_json::from_str::<EtcdState>(&json).unwrap(), state);
    }
}
