//! etcd-migrate: moves a Kubernetes control plane's etcd data across etcd versions, then execs etcd.
//!
//! See ARCHITECTURE.md for how the modules fit together.

pub mod backup;
pub mod bbolt;
pub mod bundle;
pub mod client;
pub mod cluster;
pub mod config;
pub mod copier;
pub mod data_dir;
pub mod durable;
pub mod etcd_flags;
pub mod etcd_process;
pub mod etcdctl;
pub mod exec;
pub mod faults;
pub mod logging;
pub mod migrate;
pub mod mounts;
pub mod multicall;
pub mod path_serde;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod release;
pub mod report;
pub mod run_ca;
pub mod steps;
pub mod swap;
pub mod verify;
pub mod version;
pub mod wal;
