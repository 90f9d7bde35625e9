//! The binary under test as a child process, and third-party tools the tests need.

use super::*;

/// The binary under test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mllp-proxy"))
}

/// The proxy binary running as a child process, its log lines collected.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Runs `mllp-proxy run -c CONFIG` (logging in JSON or text) with `RUST_LOG=rust_log`,
    /// which must let info lines through: the addresses are read from them.
    pub fn spawn(config: &Path, rust_log: &str) -> ProxyProcess {
        Self::spawn_env(config, rust_log, &[])
    }

    /// [`ProxyProcess::spawn`] with more environment variables (`NOTIFY_SOCKET`, …).
    pub fn spawn_env(config: &Path, rust_log: &str, env: &[(&str, &Path)]) -> ProxyProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(binary())
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn mllp-proxy");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("mllp-proxy ready") {
                    let _ = tx.send(());
                }
                sink.lock().expect("lock").push(line);
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("proxy became ready");
        let lines = log.lock().expect("lock").clone();
        let field = |msg: &str, name: &str| -> SocketAddr {
            let line = lines.iter().find(|l| l.contains(msg)).expect("log line");
            let (json, text) = (format!("\"{name}\":\""), format!(" {name}="));
            let (at, end) = match line.find(&json) {
                Some(at) => (at + json.len(), '"'),
                None => (line.find(&text).expect("field") + text.len(), ' '),
            };
            let len = line[at..].find(end).unwrap_or(line.len() - at);
            line[at..at + len].parse().expect("address")
        };
        let addr = field("route listening", "listen");
        let admin = field("admin listening", "admin");
        ProxyProcess {
            child,
            addr,
            admin,
            log,
        }
    }

    /// Sends SIGTERM and waits (15 s at most) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }

    /// Sends a signal (`-TERM`, `-HUP`) without waiting for anything.
    pub fn signal(&self, which: &str) {
        let _ = std::process::Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status();
    }

    /// Waits (15 s at most) for the exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("proxy did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGHUP: reload the configuration.
    pub fn hup(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("lock").clone()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool`, or `None` after saying so (a failure when MLLP_PROXY_REQUIRE_INTEROP=1).
pub fn promtool() -> Option<PathBuf> {
    required_tool("promtool", "--version", "prometheus")
}

/// The command `name` if `name ARG` runs, or `None` after saying so; a failure when
/// MLLP_PROXY_REQUIRE_INTEROP=1 (tests/run.sh installs `package`, a Debian package).
pub fn required_tool(name: &str, arg: &str, package: &str) -> Option<PathBuf> {
    let ok = std::process::Command::new(name)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(PathBuf::from(name));
    }
    if std::env::var("MLLP_PROXY_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("{name} not found (Debian package {package}; tests/run.sh installs it)");
    }
    eprintln!("SKIPPED: {name} not found (Debian package {package})");
    None
}

/// Starts a third-party server that cannot bind port 0 and say which it took: `spawn` starts
/// it on the loopback port it is given. Returns it once that process itself listens there
/// (TCP, or a bound socket with `udp`), with its address, trying another port when it does not
/// within `within`.
/// A port picked free and released can be taken by another test before the server binds it;
/// a connect would then reach that test's server, and the server under test, failing to
/// bind, might exit or run on without a listener.
pub fn spawn_listening(
    udp: bool,
    within: Duration,
    mut spawn: impl FnMut(u16) -> std::process::Child,
) -> (std::process::Child, SocketAddr) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = spawn(port);
        if comes_to_listen(&mut child, port, udp, within) {
            return (child, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        eprintln!("the server did not listen on port {port} (taken meanwhile?); another port");
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("the server did not listen on any of five ports");
}

/// Waits until `child` holds `port` ([`listens`]); false once it exits or `within` passes.
pub fn comes_to_listen(
    child: &mut std::process::Child,
    port: u16,
    udp: bool,
    within: Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if listens(child.id(), port, udp) {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether process `pid` holds a loopback socket on `port`: listening TCP, or bound UDP with
/// `udp` (by the socket inodes in /proc/net and the process's descriptors).
pub fn listens(pid: u32, port: u16, udp: bool) -> bool {
    let (tables, state) = match udp {
        true => (["/proc/net/udp", "/proc/net/udp6"], "07"),
        false => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
    };
    let suffix = format!(":{port:04X}");
    let inodes: Vec<String> = tables
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let ours = f.len() > 9 && f[1].ends_with(&suffix) && f[3] == state;
                    ours.then(|| format!("socket:[{}]", f[9]))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}
