//! Child processes of the stack: logs forwarded line by line with a coloured
//! `name |` prefix, each child in its own process group (so Ctrl-C reaches
//! only xtask, which then stops them in order), and tied to xtask's life
//! with `PR_SET_PDEATHSIG` so none outlives it even if xtask is killed.

use std::{
    io::{BufRead, BufReader, IsTerminal, Read, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::signals;

/// Width of the name column (the longest name, `delivery-service`); grows
/// if a longer one shows up.
static NAME_WIDTH: AtomicUsize = AtomicUsize::new(16);
static OUTPUT: Mutex<()> = Mutex::new(());
const COLORS: [&str; 6] = ["36", "33", "35", "32", "34", "91"];
static NEXT_COLOR: AtomicUsize = AtomicUsize::new(0);

/// An unprivileged account to run a child as (PostgreSQL refuses root).
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// How to stop a child: signals tried in turn, each given its time, then
/// SIGKILL.
#[derive(Debug, Clone)]
pub struct StopPolicy(pub Vec<(i32, Duration)>);

impl StopPolicy {
    /// SIGTERM, then SIGKILL after `grace`.
    pub fn term(grace: Duration) -> Self {
        Self(vec![(libc::SIGTERM, grace)])
    }
}

/// How a child is run and stopped.
pub struct Options {
    pub run_as: Option<RunAs>,
    /// What the kernel sends the child if xtask dies first.
    pub death_signal: i32,
    pub stop: StopPolicy,
    /// Output to this file instead of our stdout.
    pub log_file: Option<std::path::PathBuf>,
}

impl Options {
    /// SIGTERM to stop (and on xtask's death), SIGKILL after `grace`.
    pub fn term(grace: Duration) -> Self {
        Self {
            run_as: None,
            death_signal: libc::SIGTERM,
            stop: StopPolicy::term(grace),
            log_file: None,
        }
    }
}

pub struct Proc {
    name: String,
    child: Child,
    started: Instant,
    stop: StopPolicy,
    status: Option<ExitStatus>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `command` in its own process group, its output prefixed on our
    /// stdout (or appended to `options.log_file`).
    pub fn spawn(name: &str, mut command: Command, options: Options) -> anyhow::Result<Self> {
        let Options {
            run_as,
            death_signal,
            stop,
            log_file,
        } = options;
        command.stdin(Stdio::null()).process_group(0);
        match &log_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        if let Some(user) = run_as {
            command.uid(user.uid).gid(user.gid);
        }
        // SAFETY: prctl is async-signal-safe. It runs after the uid change
        // (which would otherwise clear the death signal).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name} ({program})"))?;
        let mut readers = Vec::new();
        if let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) {
            NAME_WIDTH.fetch_max(name.len(), Ordering::Relaxed);
            let prefix = prefix(name);
            readers.push(forward(prefix.clone(), stdout));
            readers.push(forward(prefix, stderr));
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            started: Instant::now(),
            stop,
            status: None,
            readers,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long ago it was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The exit status if the child has ended (without blocking).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn signal(&mut self, signal: i32) {
        if self.exited().is_none() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Sends the first stop signal without waiting (to stop several children
    /// at once, then [`stop`](Self::stop) each).
    pub fn begin_stop(&mut self) {
        if let Some(&(signal, _)) = self.stop.0.first() {
            self.signal(signal);
        }
    }

    /// Stops the child with its policy; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let steps = self.stop.0.clone();
        for (i, (signal, grace)) in steps.into_iter().enumerate() {
            // The first signal may already have been sent by begin_stop.
            if i > 0 || self.exited().is_none() {
                if i > 0 {
                    say(&format!(
                        "{} still running: sending {}",
                        self.name,
                        signals::name(signal)
                    ));
                }
                self.signal(signal);
            }
            if let Some(status) = self.wait_for(grace) {
                return status;
            }
        }
        say(&format!("{} did not stop: SIGKILL", self.name));
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("wait for killed child");
        self.status = Some(status);
        self.join_readers();
        status
    }

    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.join_readers();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop();
        }
    }
}

/// Runs a short command to completion with prefixed output; fails with its
/// status.
pub fn run(name: &str, command: Command, run_as: Option<RunAs>) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let options = Options {
        run_as,
        ..Options::term(Duration::from_secs(5))
    };
    let mut proc = Proc::spawn(name, command, options)?;
    loop {
        if let Some(status) = proc.exited() {
            proc.join_readers();
            anyhow::ensure!(status.success(), "{program} failed ({})", describe(status));
            return Ok(());
        }
        if let Some(signal) = signals::received() {
            proc.stop();
            anyhow::bail!("interrupted by {}", signals::name(signal));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs a command with the terminal (cargo's progress output) in our process
/// group, so Ctrl-C reaches it directly; SIGTERM to xtask is forwarded.
pub fn run_inherited(mut command: Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait()? {
            if let Some(signal) = signals::received() {
                anyhow::bail!("interrupted by {}", signals::name(signal));
            }
            anyhow::ensure!(status.success(), "{program} failed ({})", describe(status));
            return Ok(());
        }
        if !forwarded && let Some(signal) = signals::received() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(child.id() as i32, signal) };
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a log file (none if it cannot be read).
pub fn log_tail(file: &std::path::Path, lines: usize) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| (*line).to_owned())
        .collect()
}

/// "exit code 1" / "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// A line from xtask itself.
pub fn say(message: &str) {
    let _guard = OUTPUT.lock().unwrap_or_else(|e| e.into_inner());
    let width = NAME_WIDTH.load(Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    let _ = if std::io::stdout().is_terminal() {
        writeln!(out, "\x1b[1m{:>width$} |\x1b[0m {message}", "xtask")
    } else {
        writeln!(out, "{:>width$} | {message}", "xtask")
    };
    let _ = out.flush();
}

fn prefix(name: &str) -> String {
    if std::io::stdout().is_terminal() {
        let color = COLORS[NEXT_COLOR.fetch_add(1, Ordering::Relaxed) % COLORS.len()];
        format!("\x1b[{color}m{name}\x1b[0m\x00{}", name.len())
    } else {
        format!("{name}\x00{}", name.len())
    }
}

fn forward(prefix: String, stream: impl Read + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // The prefix carries its visible length after a NUL, for padding
        // around the colour codes.
        let (label, visible) = prefix.split_once('\0').expect("prefix format");
        let visible: usize = visible.parse().expect("prefix length");
        for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let width = NAME_WIDTH.load(Ordering::Relaxed);
            let pad = " ".repeat(width.saturating_sub(visible));
            let _guard = OUTPUT.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{pad}{label} | {}", line.trim_end());
            let _ = out.flush();
        }
    })
}
