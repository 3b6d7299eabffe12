//! The real binaries as child processes: logs captured with a `[name]`
//! prefix (printed live with `TEST_LOG`, the tail dumped when the test
//! panics), killed when dropped, never outliving the test process.

use std::{
    collections::{HashSet, VecDeque},
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::env::test_log_enabled;

/// Lines kept per process; older ones are dropped.
const MAX_LOG_LINES: usize = 20_000;
/// Lines shown when a test panics while the process is alive.
const TAIL_ON_PANIC: usize = 80;
/// How long [`ChildProcess::stop`] waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ChildProcess {
    name: String,
    child: Child,
    logs: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `bin` with the test process's environment plus `envs`.
    pub fn spawn<I, K, V>(name: &str, bin: impl AsRef<Path>, envs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_with_args(name, bin, std::iter::empty::<&str>(), envs)
    }

    /// Like [`spawn`](Self::spawn), with command-line arguments.
    pub fn spawn_with_args<A, S, I, K, V>(
        name: &str,
        bin: impl AsRef<Path>,
        args: A,
        envs: I,
    ) -> Self
    where
        A: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let bin = bin.as_ref();
        let mut command = Command::new(bin);
        command
            .env_clear()
            .envs(crate::env::starting_env())
            .args(args)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_tied_to_process(command)
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", bin.display()));

        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            capture(name.to_owned(), stdout, Arc::clone(&logs)),
            capture(name.to_owned(), stderr, Arc::clone(&logs)),
        ];
        Self {
            name: name.to_owned(),
            child,
            logs,
            readers,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every captured line so far (stdout and stderr interleaved, unprefixed).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().iter().cloned().collect()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The exit status once the process has ended, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits until `GET url` answers 2xx (e.g. the process's `/ready`);
    /// panics at once, with the log tail, if the process exits first, and
    /// after `timeout` otherwise.
    pub async fn wait_for_http_ok(&mut self, url: &str, timeout: Duration) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "{} exited ({status}) before GET {url} answered 2xx",
                    self.name
                );
            }
            if let Ok(response) = client.get(url).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not answer GET {url} with 2xx within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`libc::SIGINT`, ...) if the process still runs.
    pub fn signal(&mut self, signal: i32) {
        if self.is_running() {
            // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// SIGKILL, as a crash would: no graceful shutdown.
    pub fn kill_hard(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait()
    }

    /// SIGTERM and wait for a graceful exit; SIGKILL after 10 s.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM, STOP_TIMEOUT)
    }

    /// `signal`, then SIGKILL if the process is still alive after `timeout`.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                self.join_readers();
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "[{}] still running {timeout:?} after signal {signal}: SIGKILL",
            self.name
        );
        self.kill_hard()
    }

    /// Blocks until the process exits.
    pub fn wait(&mut self) -> ExitStatus {
        let status = match self.status {
            Some(status) => status,
            None => self.child.wait().expect("wait"),
        };
        self.status = Some(status);
        self.join_readers();
        status
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    fn dump_tail(&self) {
        let logs = self.logs.lock().unwrap();
        let skip = logs.len().saturating_sub(TAIL_ON_PANIC);
        eprintln!(
            "----- last {} log lines of {} -----",
            logs.len() - skip,
            self.name
        );
        for line in logs.iter().skip(skip) {
            eprintln!("[{}] {line}", self.name);
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let alive = self.is_running();
        if alive {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        self.join_readers();
        if std::thread::panicking() && !test_log_enabled() {
            self.dump_tail();
        } else if !alive
            && let Some(status) = self.status
            && !status.success()
            && status.signal().is_none()
        {
            eprintln!("[{}] had exited with {status}", self.name);
        }
    }
}

fn capture(
    name: String,
    stream: impl Read + Send + 'static,
    logs: Arc<Mutex<VecDeque<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let live = test_log_enabled();
        for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if live {
                eprintln!("[{name}] {line}");
            }
            let mut logs = logs.lock().unwrap();
            if logs.len() == MAX_LOG_LINES {
                logs.pop_front();
            }
            logs.push_back(line);
        }
    })
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns with `PR_SET_PDEATHSIG = SIGKILL`, so a child dies with the test
/// process even when it leaks (a static, an abort). The kernel ties that
/// signal to the spawning *thread*, so every spawn happens on one thread that
/// lives as long as the process.
fn spawn_tied_to_process(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-support-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((command, reply_tx))
        .expect("spawner thread alive");
    reply_rx.recv().expect("spawner reply")
}

/// A TCP port on 127.0.0.1 that was free a moment ago and has not been
/// handed out before by this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap();
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_stops() {
        let mut child = ChildProcess::spawn_with_args(
            "sh",
            "/bin/sh",
            ["-c", "echo hello; echo oops >&2; exec sleep 30"],
            [("X", "1")],
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(child.log_contains("hello") && child.log_contains("oops")) {
            assert!(Instant::now() < deadline, "logs: {:?}", child.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(child.is_running());
        let status = child.stop();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn waiting_for_http_fails_fast_when_the_process_exits() {
        let mut child = ChildProcess::spawn_with_args(
            "short-lived",
            "/bin/sh",
            ["-c", "echo bye; exit 3"],
            std::iter::empty::<(&str, &str)>(),
        );
        let url = format!("http://127.0.0.1:{}/ready", free_port());
        let started = Instant::now();
        let waited = tokio::spawn(async move {
            child.wait_for_http_ok(&url, Duration::from_secs(30)).await;
        })
        .await;
        let panic = waited.expect_err("must panic").into_panic();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("short-lived exited"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn free_ports_are_distinct() {
        assert_ne!(free_port(), free_port());
    }
}
