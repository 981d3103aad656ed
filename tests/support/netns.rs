//! Hosts of their own for a cluster's members: one network namespace per member, each joined by a veth
//! pair to a bridge in another namespace, where the test itself runs (it reruns itself there). The
//! members' addresses exist only inside these namespaces, which the test makes and removes (with every
//! process left in them) however it ends. A member is cut off by taking its bridge port down: its
//! packets, and its peers' to it, are dropped, so connections hang rather than being refused.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{cannot_run, test_name};

/// Set in the rerun inside the bridge namespace: the network's name prefix and its number of hosts.
const INSIDE: &str = "ETCD_MIGRATE_TEST_NETNS";

/// The hosts' subnet (a /24): host `i` is `.i+1`, the bridge `.254`.
const SUBNET: &str = "10.99.0";

pub struct Network {
    prefix: String,
    hosts: usize,
    /// The outer test made the namespaces and removes them when dropped; the rerun only uses them.
    owner: bool,
}

impl Network {
    /// In the test as first run: makes a bridge namespace and `hosts` host namespaces, reruns this
    /// test inside the bridge namespace, checks that it passed, removes the namespaces, and returns
    /// `None`; also `None`, saying why, where namespaces cannot be made ([`cannot_run`]). In the rerun:
    /// the network, to run the test on.
    pub fn enter(hosts: usize) -> Option<Network> {
        if let Ok(inside) = std::env::var(INSIDE) {
            let (prefix, count) = inside.rsplit_once(':').expect("prefix:hosts");
            assert_eq!(count.parse::<usize>().unwrap(), hosts, "the rerun asks for the same hosts");
            return Some(Network { prefix: prefix.into(), hosts, owner: false });
        }
        // Unique per run, and per network within it.
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("emt{}n{}", std::process::id(), MADE.fetch_add(1, Ordering::Relaxed));
        let network = Network { prefix, hosts, owner: true };
        if let Err(why) = ip(&["netns", "add", &network.bridge()]) {
            cannot_run(&format!("cannot make network namespaces (needs root): {why}"));
            return None;
        }
        network.build();
        network.rerun_inside();
        None
    }

    /// How many hosts it has.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Host `i`'s namespace.
    pub fn host(&self, i: usize) -> String {
        format!("{}-m{i}", self.prefix)
    }

    /// Host `i`'s address.
    pub fn address(&self, i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    /// Cuts host `i` off: the bridge drops every IP packet to or from it (ARP still passes, so a
    /// connection to or from it hangs, as across a real partition, instead of failing at once).
    pub fn cut(&self, i: usize) {
        self.nft(&["add", "element", "bridge", "partition", "cut", &format!("{{ {} }}", port(i))]);
    }

    /// Joins host `i` to the others again.
    pub fn mend(&self, i: usize) {
        self.nft(&["delete", "element", "bridge", "partition", "cut", &format!("{{ {} }}", port(i))]);
    }

    fn nft(&self, args: &[&str]) {
        let output =
            Command::new("ip").args(["netns", "exec", &self.bridge(), "nft"]).args(args).output().unwrap();
        assert!(output.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn build(&self) {
        let bridge = self.bridge();
        let on_bridge = |args: &[&str]| ip(&[&["-n", bridge.as_str()], args].concat()).unwrap();
        on_bridge(&["link", "set", "lo", "up"]);
        on_bridge(&["link", "add", "br0", "type", "bridge"]);
        on_bridge(&["addr", "add", &format!("{SUBNET}.254/24"), "dev", "br0"]);
        on_bridge(&["link", "set", "br0", "up"]);
        // The ports of the hosts cut off, and the rules that drop their IP packets: between hosts
        // (forward) and between a host and the test (input, output).
        self.nft(&["add", "table", "bridge", "partition"]);
        self.nft(&["add", "set", "bridge", "partition", "cut", "{ type ifname; }"]);
        for hook in ["forward", "input", "output"] {
            let chain = format!("{{ type filter hook {hook} priority 0; }}");
            self.nft(&["add", "chain", "bridge", "partition", hook, &chain]);
            for direction in ["iifname", "oifname"] {
                self.nft(&[
                    "add",
                    "rule",
                    "bridge",
                    "partition",
                    hook,
                    direction,
                    "@cut",
                    "ether",
                    "type",
                    "ip",
                    "drop",
                ]);
            }
        }
        for i in 0..self.hosts {
            let host = self.host(i);
            ip(&["netns", "add", &host]).unwrap();
            on_bridge(&["link", "add", &port(i), "type", "veth", "peer", "name", "eth0", "netns", &host]);
            on_bridge(&["link", "set", &port(i), "master", "br0", "up"]);
            let on_host = |args: &[&str]| ip(&[&["-n", host.as_str()], args].concat()).unwrap();
            on_host(&["addr", "add", &format!("{}/24", self.address(i)), "dev", "eth0"]);
            on_host(&["link", "set", "eth0", "up"]);
            on_host(&["link", "set", "lo", "up"]);
        }
    }

    /// Runs this test again inside the bridge namespace, and fails if it fails there.
    fn rerun_inside(&self) {
        let test = std::thread::current().name().expect("the harness names the test's thread").to_string();
        let output = Command::new("ip")
            .args(["netns", "exec", &self.bridge()])
            .arg(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(INSIDE, format!("{}:{}", self.prefix, self.hosts))
            .output()
            .unwrap();
        eprintln!(
            "--- {} inside {}:\n{}",
            test_name(),
            self.bridge(),
            String::from_utf8_lossy(&output.stderr)
        );
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "the test failed inside its network ({}):\n{said}", output.status);
        assert!(said.contains("1 passed"), "the rerun ran the test:\n{said}");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        for ns in (0..self.hosts).map(|i| self.host(i)).chain([self.bridge()]) {
            let pids = Command::new("ip").args(["netns", "pids", &ns]).output();
            for pid in pids.iter().flat_map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .into_owned()
                    .lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            }) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// Host `i`'s port on the bridge (in the bridge namespace).
fn port(i: usize) -> String {
    format!("vm{i}")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}
