//! Starting, stopping and polling etcd as the floors do: bare, with its output dropped.

use super::*;

pub fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

/// etcd's flags for member `name` of `initial_cluster`: clients on loopback port `client`, peers on
/// 127.0.0.1:`peer_port`, advertised as `peer_host`:`peer_port`.
pub fn member_flags(
    name: &str,
    client: u16,
    peer_port: u16,
    peer_host: &str,
    initial_cluster: &str,
) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
        format!("--initial-advertise-peer-urls=http://{peer_host}:{peer_port}"),
        format!("--initial-cluster={initial_cluster}"),
    ]
}

/// Starts etcd `binary` on `data` with `flags`, its output dropped.
pub fn spawn_etcd_with(binary: &Path, data: &Path, flags: &[String]) -> std::process::Child {
    Command::new(binary)
        .arg("--data-dir")
        .arg(data)
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts etcd as single member `m` on `data`, serving on loopback `client` and `peer_port`.
pub fn spawn_etcd(
    binary: &Path,
    data: &Path,
    client: u16,
    peer_port: u16,
    extra: &[&str],
) -> std::process::Child {
    let mut flags =
        member_flags("m", client, peer_port, "localhost", &format!("m=http://localhost:{peer_port}"));
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    spawn_etcd_with(binary, data, &flags)
}

/// How long an etcd may take to become healthy, on a busy 2-core machine at a million keys. Only a
/// deadline: every wait polls.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(300);

/// How long a stopped etcd may take to exit after SIGTERM (a leader hands over first) before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// GETs `path` from loopback `port` over HTTP/1.1 with `Connection: close` (etcd 3.0–3.3 keep an
/// HTTP/1.0 connection open); the whole answer, or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    Some(answer)
}

/// Whether etcd on loopback `client` says it is healthy.
pub fn healthy(client: u16) -> bool {
    http_get(client, "/health").is_some_and(|answer| answer.replace(' ', "").contains("\"health\":\"true\""))
}

/// Polls /health every 2 ms until etcd on `client` says it is healthy; false if etcd exits first. Past
/// [`HEALTH_DEADLINE`] it kills etcd and panics.
pub fn await_health(child: &mut std::process::Child, client: u16) -> bool {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    loop {
        if healthy(client) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcd on port {client} was not healthy within {HEALTH_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A bare etcd: start, wait for health, stop with SIGTERM. Returns start → stopped. A start that fails
/// (a port just released by the previous etcd) is retried.
pub fn bare_etcd(binary: &Path, data: &Path, peer_port: u16) -> Duration {
    for _ in 0..5 {
        let client = free_port();
        let started = Instant::now();
        let mut child = spawn_etcd(binary, data, client, peer_port, &[]);
        if !await_health(&mut child, client) {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        stop(child);
        return started.elapsed();
    }
    panic!("{} never became healthy on {}", binary.display(), data.display());
}

/// Stops etcd with SIGTERM and waits for it; SIGKILL if it has not exited after [`STOP_GRACE`]. An etcd
/// that has already exited is only reaped.
pub fn stop(mut child: std::process::Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    if child.try_wait().unwrap().is_some() {
        return;
    }
    let deadline = Instant::now() + STOP_GRACE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            eprintln!("etcd (pid {}) ignored SIGTERM for {STOP_GRACE:?}: killed", child.id());
            let _ = child.kill();
            child.wait().unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// GETs `path` from loopback `port` and returns the length of the answer, read to its end.
pub fn http_get_len(port: u16, path: &str) -> usize {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match stream.read(&mut buffer).unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}
