//! The peers of a member of a multi-member cluster: who they are (the initial cluster, less this
//! member) and what each says of itself. etcd serves `/version` on its peer URL too (its own version
//! monitor asks it there), so a peer answers even while the cluster has no quorum, and the migrator can
//! tell which peers are up and at which release without a client URL of theirs.
//!
//! Used to decide how far a member may move ahead of its peers, to wait for the cluster version to
//! settle before the next minor, to say which peers a member without quorum waits for, and to know
//! whether a member is the last of a rolling downgrade.

use std::fmt;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::client::v3::{self, Versions};
use crate::client::{Endpoint, TlsFiles};
use crate::version::{Minor, Version};

/// One peer's answer may take this long: a peer that is down must not hold up the others' or a log line.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Another member, as `--initial-cluster` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Its first peer URL.
    pub url: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.url)
    }
}

/// The members of `initial_cluster` (`name=url,name=url,...`; a name may repeat for more URLs) other
/// than `own_name`, in their order there.
pub fn peers(initial_cluster: &str, own_name: &str) -> Vec<Peer> {
    let mut peers: Vec<Peer> = Vec::new();
    for (name, url) in initial_cluster.split(',').filter_map(|member| member.trim().split_once('=')) {
        if name != own_name && !peers.iter().any(|peer| peer.name == name) {
            peers.push(Peer { name: name.to_string(), url: url.trim().to_string() });
        }
    }
    peers
}

/// What each peer answered, in the order of `peers`: `None` for a peer that did not (down, or not
/// reachable within a couple of seconds).
#[derive(Debug, Clone)]
pub struct PeerVersions(pub Vec<(Peer, Option<Versions>)>);

/// Asks every peer's `/version` at once, with the member's peer TLS files.
pub async fn ask(peers: &[Peer], tls: &TlsFiles) -> PeerVersions {
    let mut asking = JoinSet::new();
    for (index, peer) in peers.iter().enumerate() {
        let endpoint = Endpoint::new(&peer.url, tls);
        asking.spawn(async move {
            let answer = match endpoint {
                Ok(endpoint) => tokio::time::timeout(ASK_TIMEOUT, v3::versions(&endpoint)).await.ok(),
                Err(_) => None,
            };
            (index, answer.and_then(Result::ok))
        });
    }
    let mut answers = vec![None; peers.len()];
    while let Some(Ok((index, answer))) = asking.join_next().await {
        answers[index] = answer;
    }
    PeerVersions(peers.iter().cloned().zip(answers).collect())
}

impl PeerVersions {
    /// The peers that did not answer.
    pub fn silent(&self) -> Vec<&Peer> {
        self.0.iter().filter(|(_, answer)| answer.is_none()).map(|(peer, _)| peer).collect()
    }

    /// The lowest minor any peer runs, when every peer answered (else nothing can be said of them all).
    pub fn lowest_server_minor(&self) -> Option<Minor> {
        let minors: Option<Vec<Minor>> =
            self.0.iter().map(|(_, answer)| server_minor(answer.as_ref()?)).collect();
        minors?.into_iter().min()
    }

    /// The peers that do not (or may not: they did not answer) run `minor`.
    pub fn not_at(&self, minor: Minor) -> Vec<&Peer> {
        self.0
            .iter()
            .filter(|(_, answer)| answer.as_ref().and_then(server_minor) != Some(minor))
            .map(|(peer, _)| peer)
            .collect()
    }
}

fn server_minor(versions: &Versions) -> Option<Minor> {
    versions.server.parse::<Version>().ok().map(Version::minor)
}

/// `peers` as one readable list: `m1 (https://10.0.0.2:2380), m2 (...)`.
pub fn list(peers: &[&Peer]) -> String {
    peers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_the_other_members_with_their_first_url() {
        let peers = peers("m0=http://a:2380, m1=http://b:2380,m1=http://b2:2380,m2=http://c:2380", "m1");
        assert_eq!(
            peers,
            [
                Peer { name: "m0".into(), url: "http://a:2380".into() },
                Peer { name: "m2".into(), url: "http://c:2380".into() }
            ]
        );
        assert_eq!(list(&peers.iter().collect::<Vec<_>>()), "m0 (http://a:2380), m2 (http://c:2380)");
    }

    #[test]
    fn what_the_answers_say_of_the_peers() {
        let peer = |name: &str| Peer { name: name.into(), url: format!("http://{name}:2380") };
        let at = |server: &str| Some(Versions { server: server.into(), cluster: "3.5.0".into() });
        let answers = PeerVersions(vec![(peer("m0"), at("3.6.14")), (peer("m2"), at("3.5.33"))]);
        assert_eq!(answers.lowest_server_minor(), Some(Minor::new(3, 5)));
        assert!(answers.silent().is_empty());
        assert_eq!(answers.not_at(Minor::new(3, 5)), [&peer("m0")]);
        let one_down = PeerVersions(vec![(peer("m0"), at("3.6.14")), (peer("m2"), None)]);
        assert_eq!(one_down.lowest_server_minor(), None);
        assert_eq!(one_down.silent(), [&peer("m2")]);
        assert_eq!(one_down.not_at(Minor::new(3, 6)), [&peer("m2")]);
    }
}
