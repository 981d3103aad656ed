//! Paths in the migrator's JSON files (the journal, backup manifests): a path is text when it is UTF-8,
//! else its bytes as a JSON array, and reads back either way, so a data dir or backup dir whose path is
//! not UTF-8 is recorded exactly (the journal's backup path is what a recovery restores from).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Recorded<'a> {
    Text(std::borrow::Cow<'a, str>),
    Bytes(Vec<u8>),
}

impl Recorded<'_> {
    fn of(path: &Path) -> Recorded<'_> {
        match path.to_str() {
            Some(text) => Recorded::Text(text.into()),
            None => Recorded::Bytes(path.as_os_str().as_bytes().to_vec()),
        }
    }

    fn into_path(self) -> PathBuf {
        match self {
            Recorded::Text(text) => PathBuf::from(text.into_owned()),
            Recorded::Bytes(bytes) => PathBuf::from(OsString::from_vec(bytes)),
        }
    }
}

pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    Recorded::of(path).serialize(serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    Ok(Recorded::deserialize(deserializer)?.into_path())
}

/// The same for an optional path.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, serializer: S) -> Result<S::Ok, S::Error> {
        path.as_deref().map(Recorded::of).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<Recorded>::deserialize(deserializer)?.map(Recorded::into_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        #[serde(with = "super")]
        path: PathBuf,
        #[serde(with = "super::option", default)]
        backup: Option<PathBuf>,
    }

    #[test]
    fn text_paths_stay_text_and_other_bytes_come_back_exactly() {
        let text = Record { path: "/var/etcd/data".into(), backup: Some("/var/etcd/b".into()) };
        let json = serde_json::to_string(&text).unwrap();
        assert_eq!(json, r#"{"path":"/var/etcd/data","backup":"/var/etcd/b"}"#);
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), text);
        let bytes = PathBuf::from(OsString::from_vec(b"/data \xff".to_vec()));
        let record = Record { path: bytes.clone(), backup: Some(bytes) };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
        let old = serde_json::from_str::<Record>(r#"{"path":"/d"}"#).unwrap();
        assert_eq!(old, Record { path: "/d".into(), backup: None }, "a record without the option reads");
    }
}
