//! A real clamd for the tests: Debian's `clamav-daemon` (installed by `.ci/run`), started on a free
//! loopback port with a config file and a one-signature database written here (an `.ndb` body
//! signature for the EICAR test string, anywhere in a file), so nothing is downloaded. Stopped
//! (SIGKILL) when dropped. Without clamd, `Clamd::start` prints `SKIPPED ... missing` and returns
//! None: the test then passes without running.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use box_upload_gateway::scan::ClamdAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::free_port;

pub const CLAMD: &str = "/usr/sbin/clamd";
/// The name clamd gives the test signature (it adds `.UNOFFICIAL` to names from unsigned databases).
pub const SIGNATURE: &str = "Gateway.Test.EICAR.UNOFFICIAL";
/// clamd loads even a one-signature database in well under a second here; this bounds a stuck start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The EICAR anti-virus test string, assembled at run time so that neither this source nor the test
/// binary holds it whole (a developer's own virus scanner would flag them).
pub fn eicar() -> Vec<u8> {
    [
        &b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"[..],
        b"EICAR-STANDARD-ANTIVIRUS-",
        b"TEST-FILE!$H+H*",
    ]
    .concat()
}

#[derive(Debug, Clone, Default)]
pub struct ClamdOptions {
    /// clamd's `StreamMaxLength` in bytes (its default: 100 MiB).
    pub stream_max_length: Option<u64>,
    /// `MaxFileSize` (default 100 MiB) and `MaxScanSize` (default 400 MiB), in bytes: clamd does not
    /// look past them, and says OK unless `AlertExceedsMax` is on.
    pub max_file_size: Option<u64>,
    pub max_scan_size: Option<u64>,
    pub alert_exceeds_max: bool,
}

impl ClamdOptions {
    /// The limits of deploy/base (clamd.conf): every file up to ClamAV's own limit looked at whole, and what
    /// clamd cannot look at reported.
    pub fn deployed() -> Self {
        Self {
            stream_max_length: Some(2_147_483_645),
            max_file_size: Some(2_147_483_645),
            max_scan_size: Some(4 * 1024 * 1024 * 1024),
            alert_exceeds_max: true,
        }
    }
}

pub struct Clamd {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    options: ClamdOptions,
    /// From spawning clamd to its first PONG.
    pub startup: Duration,
}

impl Clamd {
    /// A clamd on a free port, or None (after saying SKIPPED) when clamd is not installed.
    pub async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, ClamdOptions::default()).await
    }

    pub async fn start_with(test: &str, options: ClamdOptions) -> Option<Self> {
        if !Path::new(CLAMD).exists() {
            let line = format!("SKIPPED {test}: {CLAMD} is missing (Debian: apt-get install clamav-daemon)");
            println!("{line}");
            eprintln!("{line}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("clamd-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        // ExtendedSignatures.md: Name:TargetType:Offset:HexSignature; type 0 (any file), offset *
        // (anywhere), so the string is found in the middle of a large file too.
        std::fs::write(
            dir.path().join("db/gateway-test.ndb"),
            format!("Gateway.Test.EICAR:0:*:{}\n", hex::encode(eicar())),
        )
        .unwrap();
        // A port taken between the probe and clamd's bind makes clamd exit: another port is tried.
        for _ in 0..5 {
            let port = free_port();
            match Self::spawn(dir.path(), port, &options).await {
                Ok((child, startup)) => {
                    eprintln!("clamd on 127.0.0.1:{port}: ready in {startup:?}");
                    return Some(Self {
                        child,
                        port,
                        dir,
                        options,
                        startup,
                    });
                }
                Err(why) => eprintln!("clamd on port {port} did not start: {why}"),
            }
        }
        panic!(
            "clamd did not start; its output: {}",
            read(&dir.path().join("clamd.out"))
        );
    }

    async fn spawn(dir: &Path, port: u16, options: &ClamdOptions) -> Result<(Child, Duration), String> {
        let mut config = format!(
            "Foreground yes\n\
             TCPSocket {port}\n\
             TCPAddr 127.0.0.1\n\
             DatabaseDirectory {db}\n\
             TemporaryDirectory {tmp}\n\
             LocalSocket {socket}\n\
             LogFile {log}\n\
             LogClean yes\n",
            socket = dir.join("clamd.sock").display(),
            db = dir.join("db").display(),
            tmp = dir.join("tmp").display(),
            log = dir.join("clamd.log").display(),
        );
        for (name, value) in [
            ("StreamMaxLength", options.stream_max_length),
            ("MaxFileSize", options.max_file_size),
            ("MaxScanSize", options.max_scan_size),
        ] {
            if let Some(n) = value {
                config.push_str(&format!("{name} {n}\n"));
            }
        }
        if options.alert_exceeds_max {
            config.push_str("AlertExceedsMax yes\n");
        }
        let conf = dir.join("clamd.conf");
        std::fs::write(&conf, config).unwrap();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("clamd.out"))
            .unwrap();
        let started = Instant::now();
        let mut child = Command::new(CLAMD)
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawning {CLAMD}: {e}"))?;
        while started.elapsed() < START_TIMEOUT {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("clamd exited with {status}"));
            }
            if ping(port).await {
                return Ok((child, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("no PONG within {START_TIMEOUT:?}"))
    }

    pub fn address(&self) -> ClamdAddress {
        ClamdAddress::Tcp {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// The same clamd on its local (Unix) socket.
    pub fn unix_address(&self) -> ClamdAddress {
        ClamdAddress::Unix(self.dir.path().join("clamd.sock"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("clamd is running")
    }

    /// clamd's resident memory now and at its peak, in KiB (`/proc/PID/status`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = read(&PathBuf::from(format!("/proc/{}/status", self.pid())));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU seconds clamd has used (all its threads: receiving streams, scanning them).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// Freezes clamd (SIGSTOP): the kernel still accepts its connections and buffers their bytes,
    /// but nothing answers. `resume` undoes it.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Kills clamd (SIGKILL) and waits for it: its connections are reset.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops clamd and starts it again on the same port (connections to the old one are gone).
    pub async fn restart(&mut self) {
        self.stop().await;
        let (child, startup) = Self::spawn(self.dir.path(), self.port, &self.options)
            .await
            .unwrap_or_else(|why| panic!("clamd did not restart: {why}"));
        self.child = child;
        self.startup = startup;
    }

    /// What clamd logged of each stream it scanned: the client's port and the result, e.g.
    /// `(43160, "OK")` or `(43160, "Gateway.Test.EICAR.UNOFFICIAL FOUND")`.
    pub fn scans(&self) -> Vec<(u16, String)> {
        read(&self.dir.path().join("clamd.log"))
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("instream(127.0.0.1@")?;
                let (port, result) = rest.split_once("): ")?;
                Some((port.parse().ok()?, result.to_owned()))
            })
            .collect()
    }

    /// Polls clamd's log until it holds `n` scans (it writes the line just after answering).
    pub async fn wait_for_scans(&self, n: usize) -> Vec<(u16, String)> {
        let started = Instant::now();
        loop {
            let scans = self.scans();
            if scans.len() >= n || started.elapsed() > Duration::from_secs(5) {
                return scans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The stream files in clamd's temporary directory (it deletes each after its scan).
    pub fn temporary_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("tmp")).map_or(0, |d| d.count())
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        // A paused clamd dies of SIGKILL all the same (kill_on_drop).
        let _ = self.child.start_kill();
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if conn.write_all(b"zPING\0").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 5];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), conn.read_exact(&mut answer)).await,
        Ok(Ok(_)) if &answer == b"PONG\0"
    )
}

/// utime + stime of `/proc/PID/stat`, in seconds.
pub fn cpu_seconds(stat: &str) -> f64 {
    let stat = read(Path::new(stat));
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11..13)
        .map_or(0.0, |f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum());
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
