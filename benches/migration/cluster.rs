//! A three-member etcd cluster on loopback, for the rolling-step rows.

use super::*;

/// One member of a [`LoopbackCluster`]: its data dir and its loopback ports.
pub struct ClusterMember {
    pub name: String,
    pub data: PathBuf,
    pub client: u16,
    pub peer: u16,
}

/// What a [`LoopbackCluster`] is seeded with: `keys` keys of `value_bytes` each (at least a small JSON object).
#[derive(Clone, Copy)]
pub struct Seed {
    pub keys: usize,
    pub value_bytes: usize,
}

/// A three-member etcd cluster on loopback, and what runs as each member now. Dropping it stops every
/// etcd it runs.
pub struct LoopbackCluster {
    pub members: Vec<ClusterMember>,
    pub initial_cluster: String,
    running: Vec<Option<std::process::Child>>,
}

impl LoopbackCluster {
    /// Starts three members of etcd `release` from `bin` in `dir`, waits until each is healthy, writes
    /// `seed`'s keys through the first and notes `release`/etcd3 in each data dir's version.txt.
    pub fn start(bin: &Path, release: &str, dir: &Path, seed: Seed) -> LoopbackCluster {
        let members: Vec<ClusterMember> = (0..3)
            .map(|i| ClusterMember {
                name: format!("m{i}"),
                data: dir.join(format!("m{i}/data")),
                client: free_port(),
                peer: free_port(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LoopbackCluster { members, initial_cluster, running: Vec::new() };
        let binary = bin.join(format!("etcd-{release}"));
        for i in 0..cluster.members.len() {
            let etcd = spawn_etcd_with(&binary, &cluster.members[i].data, &cluster.flags(i));
            cluster.running.push(Some(etcd));
        }
        cluster.await_all_healthy();
        let url = format!("http://127.0.0.1:{}", cluster.members[0].client);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let writes = async {
                let mut client = etcd_client::Client::connect([url], None).await.unwrap();
                for i in 0..seed.keys {
                    let mut value = format!("{{\"kind\":\"Pod\",\"n\":{i}}}").into_bytes();
                    // Bytes that differ from key to key and within a value, as real objects do.
                    value.extend((value.len()..seed.value_bytes).map(|j| (i * 31 + j * 7 + j / 251) as u8));
                    client.put(format!("/registry/pods/default/pod-{i}"), value, None).await.unwrap();
                }
            };
            tokio::time::timeout(HEALTH_DEADLINE, writes).await.expect("the seed keys are written in time");
        });
        for member in &cluster.members {
            fs::write(member.data.join("version.txt"), format!("{release}/etcd3")).unwrap();
        }
        cluster
    }

    /// Member `i`'s etcd flags, the final etcd's in its pod.
    pub fn flags(&self, i: usize) -> Vec<String> {
        let member = &self.members[i];
        member_flags(&member.name, member.client, member.peer, "127.0.0.1", &self.initial_cluster)
    }

    /// Polls every member's /health until all say healthy; panics past [`HEALTH_DEADLINE`].
    pub fn await_all_healthy(&self) {
        let deadline = Instant::now() + HEALTH_DEADLINE;
        while let Some(sick) = self.members.iter().find(|m| !healthy(m.client)) {
            assert!(Instant::now() < deadline, "{} was not healthy within {HEALTH_DEADLINE:?}", sick.name);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Replaces what runs as member `i` with what `start` spawns for it, as a node's roll does: the
    /// old etcd stopped (SIGTERM, waited for), the new one started. Returns the time the member was out
    /// of the cluster: from the old etcd's exit until the member's client URL answers healthy, served
    /// by etcd `release`. Then waits until every member is healthy.
    pub fn replace(
        &mut self,
        i: usize,
        release: &str,
        start: impl FnOnce(&LoopbackCluster) -> std::process::Child,
    ) -> Duration {
        stop(self.running[i].take().unwrap());
        let out = Instant::now();
        let mut etcd = start(self);
        let client = self.members[i].client;
        let up = await_health(&mut etcd, client);
        let took = out.elapsed();
        self.running[i] = Some(etcd);
        let name = &self.members[i].name;
        assert!(
            up,
            "{name} ended before it was healthy (its log: {})",
            self.members[i].data.parent().unwrap().display()
        );
        let version = http_get(client, "/version").unwrap_or_default();
        assert!(
            version.contains(&format!("\"etcdserver\":\"{release}\"")),
            "{name} is not served by {release}: {version}"
        );
        self.await_all_healthy();
        took
    }
}

impl Drop for LoopbackCluster {
    fn drop(&mut self) {
        for etcd in self.running.iter_mut().filter_map(Option::take) {
            stop(etcd);
        }
    }
}
