//! CPU and memory of the stack's processes, sampled from /proc about once a second.
//!
//! A group is found by the TCP ports it listens on (the ports are fixed by the
//! native stack), so a second PostgreSQL or broker on the machine, or test
//! processes with the same names, do not pollute the figures. A group is the
//! listening processes plus their descendants (PostgreSQL's backends and
//! walsenders); PostgreSQL has one port per server (`xtask up
//! --postgres-per-service` runs four). When nothing listens on any of the
//! ports, processes are matched by name instead, and the report says so.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A process group to watch: a name and the ports its root processes listen
/// on (none: matched by name only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub ports: Vec<u16>,
}

/// The native stack: gateway 8084, services 8081-8083, relay 8090,
/// PostgreSQL 55432 (and 55433-55435 with one server per service), broker 9092.
pub const DEFAULT_GROUPS: &str = "gateway=8084,order-service=8081,payment-service=8082,\
     delivery-service=8083,outbox-relay=8090,\
     postgres=55432,postgres=55433,postgres=55434,postgres=55435,kafka=9092";

/// Parses `name=port,name,...` (a name without a port is matched by name
/// only; a name given with several ports is one group listening on all).
pub fn parse_groups(spec: &str) -> anyhow::Result<Vec<GroupSpec>> {
    let mut groups: Vec<GroupSpec> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, port) = match item.split_once('=') {
            Some((name, port)) => (
                name.trim(),
                Some(
                    port.trim()
                        .parse::<u16>()
                        .map_err(|_| anyhow::anyhow!("bad port in process group `{item}`"))?,
                ),
            ),
            None => (item, None),
        };
        let index = match groups.iter().position(|g| g.name == name) {
            Some(index) => index,
            None => {
                groups.push(GroupSpec {
                    name: name.to_string(),
                    ports: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[index].ports.extend(port);
    }
    Ok(groups)
}

pub fn default_groups() -> Vec<GroupSpec> {
    parse_groups(DEFAULT_GROUPS).expect("the default groups parse")
}

/// The fields of /proc/<pid>/stat this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
}

/// Parses /proc/<pid>/stat. The command name is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(content: &str) -> Option<ProcStat> {
    let open = content.find('(')?;
    let close = content.rfind(')')?;
    let comm = content.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = content.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state); ppid is field 4, utime 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// A `Key:   1234 kB` line of /proc/<pid>/status or smaps_rollup, in kB.
pub fn parse_kb_field(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Socket inodes listening on `port` in the text of /proc/net/tcp or tcp6.
pub fn listening_inodes(net_tcp: &str, port: u16) -> HashSet<u64> {
    net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            let listening = *cols.get(3)? == "0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| cols.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether a process looks like `name`: its argv[0] basename is `name`, or its
/// title starts with `name:` (PostgreSQL backends), or its comm is `name`
/// truncated to the kernel's 15 characters.
pub fn name_matches(name: &str, comm: &str, argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let truncated: String = name.chars().take(15).collect();
    base == name || argv0.starts_with(&format!("{name}:")) || comm == truncated
}

fn read_argv0(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            let first = raw.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(first).into_owned()
        })
        .unwrap_or_default()
}

fn all_stats() -> HashMap<u32, ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        Some((pid, stat))
    })
    .collect()
}

/// The pid owning a socket that listens on `port`, if this user can see it.
fn listener_pid(port: u16, pids: impl Iterator<Item = u32>) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let mut owners: Vec<u32> = pids
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.filter_map(Result::ok).any(|fd| {
                        fs::read_link(fd.path())
                            .ok()
                            .and_then(|target| {
                                let target = target.to_string_lossy().into_owned();
                                let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
                                inode.parse::<u64>().ok()
                            })
                            .is_some_and(|inode| inodes.contains(&inode))
                    })
                })
                .unwrap_or(false)
        })
        .collect();
    // With SO_REUSEPORT or inherited sockets several may own it: the oldest is the root.
    owners.sort_unstable();
    owners.first().copied()
}

/// `root` and every process below it.
pub fn descendants(root: u32, parents: &HashMap<u32, u32>) -> HashSet<u32> {
    let mut members = HashSet::from([root]);
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in parents {
            if members.contains(ppid) && members.insert(*pid) {
                grew = true;
            }
        }
    }
    members
}

/// One sample of one group.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcPoint {
    pub t_s: f64,
    /// Percent of one core (200 = both cores of this machine).
    pub cpu_pct: f64,
    pub rss_mb: f64,
    /// Read every [`PSS_EVERY`]-th sample (and the last) only: `None` in
    /// the samples between.
    pub pss_mb: Option<f64>,
    pub processes: usize,
}

/// PSS comes from `/proc/PID/smaps_rollup`, which walks the page tables of
/// the process: for PostgreSQL's processes, which all map the shared
/// buffers, reading it every second took about half of this tool's CPU
/// time during a run (kernel `smaps_account`), CPU the stack under test did
/// not get. Memory moves slowly; CPU and RSS are still read every sample.
pub const PSS_EVERY: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct GroupSeries {
    pub name: String,
    /// `port 8084`, `name` or `not found`.
    pub matched_by: String,
    pub pids_seen: usize,
    pub points: Vec<ProcPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub name: String,
    pub matched_by: String,
    pub pids_seen: usize,
    pub cpu_avg_pct: f64,
    pub cpu_max_pct: f64,
    /// CPU seconds used during the sampled interval.
    pub cpu_seconds: f64,
    pub rss_avg_mb: f64,
    pub rss_max_mb: f64,
    pub pss_max_mb: f64,
}

impl GroupSeries {
    pub fn summary(&self) -> GroupSummary {
        let n = self.points.len().max(1) as f64;
        let mut cpu_seconds = 0.0;
        let mut prev_t = 0.0;
        for p in &self.points {
            cpu_seconds += p.cpu_pct / 100.0 * (p.t_s - prev_t);
            prev_t = p.t_s;
        }
        GroupSummary {
            name: self.name.clone(),
            matched_by: self.matched_by.clone(),
            pids_seen: self.pids_seen,
            cpu_avg_pct: self.points.iter().map(|p| p.cpu_pct).sum::<f64>() / n,
            cpu_max_pct: self.points.iter().map(|p| p.cpu_pct).fold(0.0, f64::max),
            cpu_seconds,
            rss_avg_mb: self.points.iter().map(|p| p.rss_mb).sum::<f64>() / n,
            rss_max_mb: self.points.iter().map(|p| p.rss_mb).fold(0.0, f64::max),
            pss_max_mb: self
                .points
                .iter()
                .filter_map(|p| p.pss_mb)
                .fold(0.0, f64::max),
        }
    }
}

struct Group {
    spec: GroupSpec,
    /// The processes listening on the spec's ports (empty: match by name).
    roots: Vec<u32>,
    matched_by: String,
    seen: HashSet<u32>,
    points: Vec<ProcPoint>,
}

impl Group {
    /// Whether the group has roots and every one of them still runs (a
    /// server restarted on its port is looked up again).
    fn roots_alive(&self, stats: &HashMap<u32, ProcStat>) -> bool {
        !self.roots.is_empty() && self.roots.iter().all(|pid| stats.contains_key(pid))
    }
}

/// Samples groups of processes; `sample` is called once per interval.
pub struct Sampler {
    groups: Vec<Group>,
    ticks_per_s: f64,
    started: Instant,
    last_sample: Instant,
    /// CPU ticks of each pid at the previous sample.
    previous: HashMap<u32, u64>,
    /// Ticks since boot when sampling began: processes born later count from 0.
    boot_ticks_at_start: u64,
    /// Looking for listeners walks every process's fds: not more than every few seconds.
    last_resolve: Instant,
    samples_taken: usize,
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn uptime_ticks(ticks_per_s: f64) -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * ticks_per_s) as u64)
        .unwrap_or(0)
}

impl Sampler {
    /// `self_name`: also sample this load tool itself under that name.
    pub fn new(specs: Vec<GroupSpec>, self_name: Option<&str>) -> Self {
        let ticks_per_s = clock_ticks_per_second();
        let mut groups: Vec<Group> = specs
            .into_iter()
            .map(|spec| Group {
                spec,
                roots: Vec::new(),
                matched_by: "not found".into(),
                seen: HashSet::new(),
                points: Vec::new(),
            })
            .collect();
        if let Some(name) = self_name {
            groups.push(Group {
                spec: GroupSpec {
                    name: name.to_string(),
                    ports: Vec::new(),
                },
                roots: vec![std::process::id()],
                matched_by: "self".into(),
                seen: HashSet::new(),
                points: Vec::new(),
            });
        }
        let mut sampler = Self {
            groups,
            ticks_per_s,
            started: Instant::now(),
            last_sample: Instant::now(),
            previous: HashMap::new(),
            boot_ticks_at_start: uptime_ticks(ticks_per_s),
            last_resolve: Instant::now(),
            samples_taken: 0,
        };
        let stats = all_stats();
        sampler.resolve_roots(&stats);
        sampler.previous = stats.iter().map(|(pid, s)| (*pid, s.cpu_ticks)).collect();
        sampler
    }

    fn resolve_roots(&mut self, stats: &HashMap<u32, ProcStat>) {
        for group in &mut self.groups {
            if group.matched_by == "self" {
                continue;
            }
            if group.roots_alive(stats) {
                continue;
            }
            let found: Vec<(u16, u32)> = group
                .spec
                .ports
                .iter()
                .filter_map(|&port| Some((port, listener_pid(port, stats.keys().copied())?)))
                .collect();
            group.roots = found.iter().map(|&(_, pid)| pid).collect();
            group.matched_by = match found.as_slice() {
                [] => "name".into(),
                [(port, _)] => format!("port {port}"),
                found => format!(
                    "ports {}",
                    found
                        .iter()
                        .map(|(port, _)| port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
        }
    }

    /// Takes one sample of every group, with PSS every [`PSS_EVERY`]-th
    /// time (the first included).
    pub fn sample(&mut self) {
        let with_pss = self.samples_taken.is_multiple_of(PSS_EVERY);
        self.sample_with(with_pss);
    }

    /// Takes one sample of every group, PSS included.
    pub fn sample_with_pss(&mut self) {
        self.sample_with(true);
    }

    fn sample_with(&mut self, with_pss: bool) {
        self.samples_taken += 1;
        let now = Instant::now();
        let interval = now.duration_since(self.last_sample).as_secs_f64().max(1e-3);
        self.last_sample = now;
        let t_s = now.duration_since(self.started).as_secs_f64();
        let stats = all_stats();
        let root_missing = self
            .groups
            .iter()
            .any(|g| g.matched_by != "self" && !g.spec.ports.is_empty() && !g.roots_alive(&stats));
        if root_missing && now.duration_since(self.last_resolve) >= Duration::from_secs(5) {
            self.last_resolve = now;
            self.resolve_roots(&stats);
        }
        let parents: HashMap<u32, u32> = stats.iter().map(|(pid, s)| (*pid, s.ppid)).collect();
        let mut claimed: HashSet<u32> = HashSet::new();
        for group in &mut self.groups {
            let members: Vec<u32> = match group.roots_alive(&stats) {
                true => {
                    let mut m: Vec<u32> = group
                        .roots
                        .iter()
                        .flat_map(|&root| descendants(root, &parents))
                        .collect();
                    m.sort_unstable();
                    m.dedup();
                    m
                }
                false => {
                    let mut m: Vec<u32> = stats
                        .iter()
                        .filter(|(pid, s)| {
                            name_matches(&group.spec.name, &s.comm, &read_argv0(**pid))
                        })
                        .map(|(pid, _)| *pid)
                        .collect();
                    m.sort_unstable();
                    m
                }
            };
            let mut point = ProcPoint {
                t_s,
                cpu_pct: 0.0,
                rss_mb: 0.0,
                pss_mb: with_pss.then_some(0.0),
                processes: 0,
            };
            for pid in members {
                // A process counts once, in the first group that claims it.
                if !claimed.insert(pid) {
                    continue;
                }
                let stat = &stats[&pid];
                let before = match self.previous.get(&pid) {
                    Some(ticks) => *ticks,
                    None if stat.start_ticks >= self.boot_ticks_at_start => 0,
                    None => stat.cpu_ticks,
                };
                let delta = stat.cpu_ticks.saturating_sub(before) as f64 / self.ticks_per_s;
                point.cpu_pct += delta / interval * 100.0;
                if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
                    point.rss_mb += parse_kb_field(&status, "VmRSS").unwrap_or(0) as f64 / 1024.0;
                }
                if let Some(pss) = point.pss_mb.as_mut()
                    && let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                {
                    *pss += parse_kb_field(&rollup, "Pss").unwrap_or(0) as f64 / 1024.0;
                }
                point.processes += 1;
                group.seen.insert(pid);
            }
            group.points.push(point);
        }
        self.previous = stats.iter().map(|(pid, s)| (*pid, s.cpu_ticks)).collect();
    }

    pub fn finish(self) -> Vec<GroupSeries> {
        self.groups
            .into_iter()
            .map(|g| GroupSeries {
                name: g.spec.name,
                matched_by: if g.seen.is_empty() {
                    "not found".into()
                } else {
                    g.matched_by
                },
                pids_seen: g.seen.len(),
                points: g.points,
            })
            .collect()
    }
}

/// Samples on a plain thread (not the runtime the load runs on) until stopped.
pub struct SamplerHandle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<GroupSeries>>,
}

impl SamplerHandle {
    pub fn spawn(specs: Vec<GroupSpec>, self_name: Option<&'static str>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sampler = Sampler::new(specs, self_name);
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= next {
                        sampler.sample();
                        next += every;
                    } else {
                        std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    }
                }
                sampler.sample_with_pss();
                sampler.finish()
            })
        };
        Self { stop, thread }
    }

    pub fn stop(self) -> Vec<GroupSeries> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let line = "4242 (postgres: (wal) x) S 17 4242 4242 0 -1 4194560 120 0 0 0 \
                    250 75 0 0 20 0 1 0 98765 123456789 1000 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "postgres: (wal) x");
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.cpu_ticks, 325);
        assert_eq!(stat.start_ticks, 98765);
    }

    #[test]
    fn own_stat_parses() {
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        let stat = parse_stat(&own).unwrap();
        assert!(stat.start_ticks > 0);
    }

    #[test]
    fn kb_fields() {
        let status = "Name:\tgateway\nVmPeak:\t  200 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 100 kB\n";
        assert_eq!(parse_kb_field(status, "VmRSS"), Some(51234));
        assert_eq!(parse_kb_field(status, "Rss"), None);
        let rollup = "Rss:  2000 kB\nPss:  1500 kB\nPss_Anon: 10 kB\n";
        assert_eq!(parse_kb_field(rollup, "Pss"), Some(1500));
    }

    #[test]
    fn listening_sockets_by_port() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F94 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
           1: 0100007F:1F94 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
           2: 00000000:D868 00000000:0000 0A 00000000:00000000 00:00000000 00000000   102        0 333 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp, 8084), HashSet::from([111]));
        assert_eq!(listening_inodes(tcp, 55400), HashSet::from([333]));
        assert!(listening_inodes(tcp, 9092).is_empty());
    }

    #[test]
    fn names_match_argv_titles_and_truncated_comm() {
        assert!(name_matches(
            "gateway",
            "gateway",
            "/root/target/release/gateway"
        ));
        assert!(name_matches(
            "postgres",
            "postgres",
            "postgres: walsender postgres [local]"
        ));
        assert!(name_matches("delivery-service", "delivery-servic", ""));
        assert!(!name_matches(
            "gateway",
            "gateway-test",
            "/bin/gateway-test"
        ));
    }

    #[test]
    fn descendants_follow_the_tree() {
        let parents = HashMap::from([(10, 1), (11, 10), (12, 11), (20, 1)]);
        assert_eq!(descendants(10, &parents), HashSet::from([10, 11, 12]));
    }

    #[test]
    fn groups_parse() {
        assert_eq!(
            parse_groups("gateway=8084, kafka, postgres=1, postgres=2").unwrap(),
            vec![
                GroupSpec {
                    name: "gateway".into(),
                    ports: vec![8084]
                },
                GroupSpec {
                    name: "kafka".into(),
                    ports: vec![]
                },
                GroupSpec {
                    name: "postgres".into(),
                    ports: vec![1, 2]
                },
            ]
        );
        assert!(parse_groups("gateway=x").is_err());
        let defaults = default_groups();
        assert_eq!(defaults.len(), 7);
        let postgres = defaults.iter().find(|g| g.name == "postgres").unwrap();
        assert_eq!(postgres.ports, [55432, 55433, 55434, 55435]);
    }

    #[test]
    fn sampler_sees_its_own_cpu_and_memory() {
        let mut sampler = Sampler::new(Vec::new(), Some("load"));
        let spin_until = Instant::now() + Duration::from_millis(300);
        let mut x = 0u64;
        while Instant::now() < spin_until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        sampler.sample();
        let series = sampler.finish();
        let point = series[0].points[0];
        assert!(point.cpu_pct > 20.0, "cpu {}", point.cpu_pct);
        assert!(point.rss_mb > 1.0);
        assert_eq!(series[0].matched_by, "self");
        let summary = series[0].summary();
        assert!(summary.cpu_seconds > 0.05);
    }

    #[test]
    fn pss_is_read_every_few_samples_and_at_the_end() {
        let mut sampler = Sampler::new(Vec::new(), Some("load"));
        for _ in 0..PSS_EVERY + 1 {
            sampler.sample();
        }
        sampler.sample_with_pss();
        let series = sampler.finish();
        let read: Vec<bool> = series[0]
            .points
            .iter()
            .map(|p| p.pss_mb.is_some())
            .collect();
        let mut expected = vec![false; PSS_EVERY + 2];
        expected[0] = true;
        expected[PSS_EVERY] = true;
        expected[PSS_EVERY + 1] = true;
        assert_eq!(read, expected);
        assert!(series[0].points[0].pss_mb.unwrap() > 1.0);
        assert!(series[0].summary().pss_max_mb > 1.0);
    }

    #[test]
    fn summary_of_points() {
        let series = GroupSeries {
            name: "gateway".into(),
            matched_by: "port 8084".into(),
            pids_seen: 1,
            points: vec![
                ProcPoint {
                    t_s: 1.0,
                    cpu_pct: 50.0,
                    rss_mb: 10.0,
                    pss_mb: Some(9.0),
                    processes: 1,
                },
                ProcPoint {
                    t_s: 2.0,
                    cpu_pct: 150.0,
                    rss_mb: 30.0,
                    pss_mb: None,
                    processes: 1,
                },
            ],
        };
        let s = series.summary();
        assert_eq!(s.cpu_avg_pct, 100.0);
        assert_eq!(s.cpu_max_pct, 150.0);
        assert!((s.cpu_seconds - 2.0).abs() < 1e-9);
        assert_eq!(s.rss_max_mb, 30.0);
        assert_eq!(s.pss_max_mb, 9.0, "samples without PSS do not count");
    }
}
