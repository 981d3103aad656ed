//! Rolling steps of a three-member cluster: how long a member is out of it.

use super::*;

impl Bench {
    /// Member `i`'s pod at `target`, as a control plane runs it: the migrator in exec mode with the
    /// member's identity and a hidden client URL, then `--` and the final etcd's flags. Its output (and
    /// the exec'd etcd's) goes to `pod-<target>.log` beside the data dir; its backups go there too.
    pub fn pod(&self, cluster: &LoopbackCluster, i: usize, target: &str) -> std::process::Child {
        let member = &cluster.members[i];
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let log = member.data.with_file_name(format!("pod-{target}.log"));
        Command::new(&self.migrator)
            .arg("--data-dir")
            .arg(&member.data)
            .arg("--bin-dir")
            .arg(&self.bin)
            .args(["--target-version", target, "--name", &member.name, "--log-format", "json"])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.initial_cluster])
            .arg("--")
            .args(cluster.flags(i))
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// The rolling steps a control plane takes: 3.4.23 → 3.5.30, and 3.6.14 → 3.7.1, whose step seals
    /// the data on 3.6 first; and 3.4.23 → 3.5.30 again with a member holding 256 MiB.
    pub fn rolling(&self) -> Vec<Row> {
        vec![
            self.rolling_step("3.4.23", "3.5.30", ""),
            self.rolling_step("3.6.14", "3.7.1", " (with its seal on 3.6: a forced snapshot)"),
            self.rolling_step_with_data("3.4.23", "3.5.30"),
        ]
    }

    /// [`Bench::roll`] of 300 small keys against a bare restart.
    pub fn rolling_step(&self, from: &str, to: &str, note: &str) -> Row {
        let what = format!(
            "rolling step {from} → {to}{note}, time a member is out of the cluster (median of 3 members)"
        );
        let aim = if to == "3.7.1" { "≤ 3× the bare restart" } else { "≤ 2× the bare restart" };
        if let Some(not_run) = self.not_run(&[from, to]) {
            return (what, not_run, aim.into());
        }
        let roll = self.roll(from, to, Seed { keys: 300, value_bytes: 0 }, "");
        let (ours, floor) = (median(roll.ours.clone()), median(roll.floor.clone()));
        let result = format!(
            "{ours:.2} s vs {floor:.2} s for a bare restart of the same etcd: {:.1}× ({})",
            ours / floor,
            roll.members()
        );
        (what, result, aim.into())
    }

    /// [`Bench::roll`] of a member holding 256 MiB (values of 256 KiB: etcd's WAL and its db each hold
    /// them), against its floor: a bare restart plus the member's data (its files' bytes but their holes:
    /// the preallocated, never-written tail of a WAL segment) at the rate `cp -a` + `sync` copies that
    /// data on the same disk, in the same run.
    pub fn rolling_step_with_data(&self, from: &str, to: &str) -> Row {
        const VALUE: usize = 256 << 10;
        let what = format!(
            "rolling step {from} → {to}, a member holding 256 MiB of data, time out of the cluster (median of 3 members)"
        );
        let aim = "≤ the bare restart + its data at cp -a + sync's rate".to_string();
        if let Some(not_run) = self.not_run(&[from, to]) {
            return (what, not_run, aim);
        }
        // The WAL and the db each hold every value once.
        let roll = self.roll(from, to, Seed { keys: (128 << 20) / VALUE, value_bytes: VALUE }, "-256mib");
        let member = roll.data_dirs[0].join("member");
        let data_bytes = data_bytes(&member);
        let (mut rates, copy) = (Vec::new(), self.work.join("cp-member"));
        for _ in 0..3 {
            let _ = fs::remove_dir_all(&copy);
            let started = Instant::now();
            assert!(Command::new("cp").arg("-a").arg(&member).arg(&copy).status().unwrap().success());
            assert!(Command::new("sync").status().unwrap().success());
            rates.push(data_bytes as f64 / started.elapsed().as_secs_f64());
        }
        let _ = fs::remove_dir_all(&copy);
        let rate = median(rates);
        let floor: Vec<f64> = roll.floor.iter().map(|restart| restart + data_bytes as f64 / rate).collect();
        let (ours, floor_median) = (median(roll.ours.clone()), median(floor));
        let result = format!(
            "{ours:.2} s vs {floor_median:.2} s for a bare restart ({:.2} s) + {:.0} MiB of data at {:.0} MiB/s: {:.2}× ({})",
            median(roll.floor.clone()),
            data_bytes as f64 / (1u64 << 20) as f64,
            rate / (1u64 << 20) as f64,
            ours / floor_median,
            roll.members()
        );
        (what, result, aim)
    }

    /// One rolling step `from` → `to` of a three-member cluster seeded with `seed`: each member in turn
    /// stopped and started again as its pod at `to`, timed from its old etcd's exit until its own client
    /// URL answers healthy, served by etcd `to`; every member healthy again before the next. The floor,
    /// in the same run and member by member alternately: the same on a second, identically seeded
    /// cluster, each member's etcd `from` replaced by a bare etcd `to` on its data with the same flags.
    pub fn roll(&self, from: &str, to: &str, seed: Seed, tag: &str) -> Roll {
        let dir = self.work.join(format!("rolling-{to}{tag}"));
        let mut pods = LoopbackCluster::start(&self.bin, from, &dir.join("pods"), seed);
        let mut bare = LoopbackCluster::start(&self.bin, from, &dir.join("bare"), seed);
        let target = self.bin.join(format!("etcd-{to}"));
        let (mut ours, mut floor, mut spawned) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..pods.members.len() {
            let pod = |cluster: &LoopbackCluster| {
                spawned.push(wall_time());
                self.pod(cluster, i, to)
            };
            ours.push(pods.replace(i, to, pod).as_secs_f64());
            floor.push(
                bare.replace(i, to, |cluster| {
                    spawn_etcd_with(&target, &cluster.members[i].data, &cluster.flags(i))
                })
                .as_secs_f64(),
            );
        }
        let logs = pods
            .members
            .iter()
            .map(|member| fs::read_to_string(member.data.with_file_name(format!("pod-{to}.log"))).unwrap())
            .collect();
        let data_dirs = bare.members.iter().map(|member| member.data.clone()).collect();
        drop((pods, bare));
        Roll { ours, floor, spawned, logs, data_dirs }
    }
}

/// What [`Bench::roll`] measured, member by member.
pub struct Roll {
    pub ours: Vec<f64>,
    pub floor: Vec<f64>,
    /// When each pod was started, in seconds since midnight UTC.
    pub spawned: Vec<f64>,
    /// Each pod's log: the migrator's JSON lines, then its etcd's.
    pub logs: Vec<String>,
    /// The floor's members' data dirs, left on disk.
    pub data_dirs: Vec<PathBuf>,
}

impl Roll {
    /// Each member's figures, and where the migrator's time went by its log.
    fn members(&self) -> String {
        let each = |samples: &[f64]| samples.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        let phases: Vec<PodPhases> = self
            .logs
            .iter()
            .zip(&self.spawned)
            .map(|(log, &spawned)| PodPhases::from_log(log, spawned))
            .collect();
        let phase = |of: fn(&PodPhases) -> f64| each(&phases.iter().map(of).collect::<Vec<_>>());
        format!(
            "m0, m1, m2: {} s vs {} s; from the pod's start: planned and checked {} s (its preflight checks {} s), then its backup {} s; its first step at {} s, its exec of etcd at {} s",
            each(&self.ours),
            each(&self.floor),
            phase(|p| p.preflight),
            phase(|p| p.checks),
            phase(|p| p.backup),
            phase(|p| p.first_step),
            phase(|p| p.exec),
        )
    }
}

/// The bytes of the files under `dir` that hold data: their holes (a WAL segment's preallocated,
/// never-written tail, on filesystems that report it as one) left out.
fn data_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += data_bytes(&path);
            continue;
        }
        let file = fs::File::open(&path).unwrap();
        let seek = |from: u64, whence| {
            // SAFETY: lseek reads no memory of ours; the descriptor is open.
            let at =
                unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), from as libc::off_t, whence) };
            (at >= 0).then_some(at as u64)
        };
        let mut offset = 0;
        while let Some(data) = seek(offset, libc::SEEK_DATA) {
            let hole = seek(data, libc::SEEK_HOLE).unwrap();
            total += hole - data;
            offset = hole;
        }
    }
    total
}
