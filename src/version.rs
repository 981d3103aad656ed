//! etcd versions and storage kinds, as written in `version.txt` (`3.4.23/etcd3`).
//!
//! Parsing is strict: a version file that does not say exactly `X.Y.Z/etcdN` (with semver's pre-release
//! and build parts if any, `3.4.13-rc.0/etcd3`, as Kubernetes' migrate reads it) is an error that names
//! what was expected, never a guess.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// An etcd release version, `major.minor.patch`, with semver's pre-release and build parts if it has
/// them (`3.4.13-rc.0`), kept so that what a version file says is shown back. It orders as semver does
/// (`3.4.13-rc.0` < `3.4.13`), the build part last only to tell apart what differs in it; its minor, for
/// etcd's one-minor rule, is `major.minor` whatever the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// What follows the patch as written, `-rc.0+build.7` (empty for a release): interned, a thin
    /// pointer so that `Version` stays small and `Copy` (every version a run reads is one of a handful).
    suffix: &'static String,
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
    #[error("{0:?} is not a version: expected X.Y.Z (or semver's X.Y.Z-rc.0), e.g. 3.4.23")]
    Version(String),
    #[error("{0:?} is not a storage: expected etcd2 or etcd3")]
    Storage(String),
    #[error("{0:?} is not a version/storage pair: expected X.Y.Z/etcdN, e.g. 3.4.23/etcd3")]
    State(String),
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version { major, minor, patch, suffix: &NO_SUFFIX }
    }

    pub const fn minor(self) -> Minor {
        Minor { major: self.major, minor: self.minor }
    }

    /// Semver's pre-release part, `rc.0` (empty: a release).
    pub fn pre(&self) -> &'static str {
        let pre = self.suffix.as_str().split('+').next().unwrap_or_default();
        pre.strip_prefix('-').unwrap_or_default()
    }

    /// Semver's build part, `build.7` (empty: none).
    pub fn build(&self) -> &'static str {
        self.suffix.as_str().split_once('+').map_or("", |(_, build)| build)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre(), other.pre()) {
                ("", "") => Ordering::Equal,
                ("", _) => Ordering::Greater,
                (_, "") => Ordering::Less,
                (mine, theirs) => pre_release_precedence(mine, theirs),
            })
            .then_with(|| self.build().cmp(other.build()))
    }
}

// By hand, as text: serde's derive would borrow the interned suffix from the input.
impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Semver's precedence of two pre-release parts: identifier by identifier, numbers numerically and
/// below words, words in ASCII order; a prefix first.
fn pre_release_precedence(mine: &str, theirs: &str) -> Ordering {
    let (mut mine, mut theirs) = (mine.split('.'), theirs.split('.'));
    loop {
        match (mine.next(), theirs.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(a), Some(b)) => {
                let order = match (a.parse::<u64>(), b.parse::<u64>()) {
                    (Ok(a), Ok(b)) => a.cmp(&b),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => a.cmp(b),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Whether `part` is a valid pre-release (`numeric_without_leading_zero`) or build part: dot-separated
/// identifiers of ASCII letters, digits and `-`.
fn valid_semver_part(part: &str, numeric_without_leading_zero: bool) -> bool {
    part.split('.').all(|id| {
        let numeric = id.bytes().all(|b| b.is_ascii_digit());
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !(numeric_without_leading_zero && numeric && id.len() > 1 && id.starts_with('0'))
    })
}

static NO_SUFFIX: String = String::new();

/// `suffix` as a `&'static String`, each distinct one allocated once per process.
fn intern(suffix: &str) -> &'static String {
    static SEEN: Mutex<Vec<&'static String>> = Mutex::new(Vec::new());
    if suffix.is_empty() {
        return &NO_SUFFIX;
    }
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = seen.iter().find(|known| known.as_str() == suffix) {
        return known;
    }
    let leaked: &'static String = Box::leak(Box::new(suffix.to_string()));
    seen.push(leaked);
    leaked
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
        let error = || ParseError::Version(s.to_string());
        let (rest, build) = s.split_once('+').map_or((s, None), |(rest, build)| (rest, Some(build)));
        let (numbers, pre) = rest.split_once('-').map_or((rest, None), |(numbers, pre)| (numbers, Some(pre)));
        if !pre.is_none_or(|pre| valid_semver_part(pre, true))
            || !build.is_none_or(|build| valid_semver_part(build, false))
        {
            return Err(error());
        }
        let parsed: Option<Vec<u32>> = numbers.split('.').map(parse_number).collect();
        match parsed.as_deref() {
            Some(&[major, minor, patch]) => {
                Ok(Version { suffix: intern(&s[numbers.len()..]), ..Version::new(major, minor, patch) })
            }
            _ => Err(error()),
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
        write!(f, "{}.{}.{}{}", self.major, self.minor, self.patch, self.suffix)
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
            "3.4.13-/etcd3",
            "3.4.13-rc..0/etcd3",
            "3.4.13-rc.01/etcd3",
            "3.4.13-rc_0/etcd3",
            "3.4.13+/etcd3",
            "3.4.13+a+b/etcd3",
            "3.4.13-rc.0+/etcd3",
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
    fn keeps_semvers_pre_release_and_build_and_shows_them_back() {
        for (text, pre, build) in [
            ("3.4.13-rc.0", "rc.0", ""),
            ("1.1.1-rc.0", "rc.0", ""),
            ("3.5.0-alpha.1+git.abc-1", "alpha.1", "git.abc-1"),
            ("3.4.23+build.07", "", "build.07"),
            ("3.4.13-0.a-b", "0.a-b", ""),
        ] {
            let version: Version = text.parse().unwrap();
            assert_eq!((version.pre(), version.build()), (pre, build), "{text}");
            assert_eq!(version.to_string(), text);
        }
        let state: EtcdState = "3.4.13-rc.0/etcd3".parse().unwrap();
        assert_eq!(state.to_string(), "3.4.13-rc.0/etcd3");
        assert_eq!(state.version.minor(), Minor::new(3, 4), "a pre-release of 3.4.13 is of minor 3.4");
        assert_eq!(serde_json::to_string(&state).unwrap(), "\"3.4.13-rc.0/etcd3\"");
    }

    #[test]
    fn orders_pre_releases_as_semver_does() {
        // semver.org's own example, then a release's neighbours.
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "3.4.12",
            "3.4.13-rc.0",
            "3.4.13-rc.1",
            "3.4.13",
            "3.4.13+build.1",
            "3.4.14-rc.0",
        ];
        let versions: Vec<Version> = ordered.iter().map(|v| v.parse().unwrap()).collect();
        for pair in versions.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        let mut shuffled = versions.clone();
        shuffled.reverse();
        shuffled.sort();
        assert_eq!(shuffled, versions);
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
