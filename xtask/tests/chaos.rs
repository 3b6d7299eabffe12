//! The chaos suite: `cargo xtask up` as a user runs it, hit in the middle of
//! a burst of orders by what goes wrong in production: Ctrl-C and `up`
//! again, the broker killed with SIGKILL or its data wiped, the relay, each
//! service and PostgreSQL killed with SIGKILL. After each, every order the
//! gateway accepted ends final, every wallet was charged exactly the totals
//! of its customer's DELIVERY_SCHEDULED orders, and no order was charged or
//! refunded twice; a table per scenario (orders accepted, final, re-driven,
//! seconds to all-final) is printed and kept in docs/saga.md. The whole
//! native stack runs, from the binaries the tests use (`COMMERCE_BIN_DIR`),
//! on ports shifted by `--port-offset` and with its data in a directory of
//! the test's own.

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use test_support::{
    ChildProcess, TestDatabase, bin_dir, bin_path, compose::workspace_root, query_i64, wait_until,
};
use tokio::task::JoinSet;

const INITIAL_CREDIT: i64 = 100_000;
const FINAL: [&str; 3] = ["DELIVERY_SCHEDULED", "REJECTED", "CANCELLED"];
/// The stack's default ports (xtask/src/up.rs), shifted by the offset.
const DEFAULT_PORTS: [u16; 8] = [55432, 9092, 9093, 8081, 8082, 8083, 8084, 8090];
const GATEWAY: u16 = 8084;
const ORDER: u16 = 8081;
const PAYMENT: u16 = 8082;
const DELIVERY: u16 = 8083;
const RELAY: u16 = 8090;
const KAFKA: u16 = 9092;
const POSTGRES: u16 = 55432;

/// An offset, in hundreds from `hundreds`, that leaves every port of the
/// stack free right now. The tests of this file run at the same time, each
/// with a range of its own: two drawing the same offset at the same moment
/// would both find it free, and the second `up` would fail on a taken port.
fn free_port_offset(hundreds: std::ops::RangeInclusive<u16>) -> u16 {
    for _ in 0..50 {
        let offset = 100 * rand_between(*hundreds.start(), *hundreds.end());
        let free = DEFAULT_PORTS
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", p + offset)).is_ok());
        if free {
            return offset;
        }
    }
    panic!("no port offset leaves the stack's eight ports free");
}

fn rand_between(low: u16, high: u16) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    low + (nanos % u32::from(high - low + 1)) as u16
}

/// Where a test's stack lives: its data directory (kept across its `up`s),
/// its ports and the client that talks to its gateway.
struct Site {
    data: tempfile::TempDir,
    offset: u16,
    base: String,
    http: reqwest::Client,
}

impl Site {
    /// A new site with its stack up. A port found free can be taken before
    /// `up` binds it (PostgreSQL's shifted port lies in the range the
    /// kernel hands out to other tests' connections and `free_port`s): then
    /// `up` stops at once naming the port, and the site moves to another
    /// offset.
    async fn start(offsets: std::ops::RangeInclusive<u16>) -> (Site, ChildProcess) {
        for _ in 0..5 {
            let site = Site::new(offsets.clone());
            match up(site.data.path(), site.offset, &[]).await {
                Ok(stack) => return (site, stack),
                Err(log) if log.contains("is already in use") => {
                    println!("a port of offset {} was taken; another offset", site.offset);
                }
                Err(log) => panic!("`xtask up` exited during start-up:\n{log}"),
            }
        }
        panic!("five offsets in a row had a port taken");
    }

    fn new(offsets: std::ops::RangeInclusive<u16>) -> Site {
        let data = tempfile::tempdir().unwrap();
        // The PostgreSQL account must reach its data directory in here.
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let offset = free_port_offset(offsets);
        Site {
            data,
            offset,
            base: format!("http://127.0.0.1:{}", GATEWAY + offset),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// `up` again on the site's data and ports.
    async fn up(&self) -> ChildProcess {
        self.up_with(&[]).await
    }

    /// `up` again with more arguments (`--recreate-slot order`).
    async fn up_with(&self, extra: &[&str]) -> ChildProcess {
        up(self.data.path(), self.offset, extra)
            .await
            .unwrap_or_else(|log| panic!("`xtask up` exited during start-up:\n{log}"))
    }

    fn port(&self, default: u16) -> u16 {
        default + self.offset
    }
}

/// `cargo xtask up` (the built binary) until it says the stack is ready;
/// its log if it exits before.
async fn up(data_dir: &Path, offset: u16, extra: &[&str]) -> Result<ChildProcess, String> {
    let mut args = vec![
        "up".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
        "--port-offset".to_owned(),
        offset.to_string(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let mut process = ChildProcess::spawn_with_args(
        "xtask-up",
        bin_path("xtask"),
        args,
        [
            // Where xtask finds the workspace (db/bootstrap, xtask/kafka).
            (
                "CARGO_MANIFEST_DIR",
                workspace_root().join("xtask").into_os_string(),
            ),
            ("COMMERCE_BIN_DIR", bin_dir().into_os_string()),
        ],
    );
    let started = Instant::now();
    while !process.log_contains("the stack is ready") {
        if !process.is_running() {
            return Err(format!(
                "{:?}\n{}",
                process.try_wait(),
                process.logs().join("\n")
            ));
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "`xtask up` was not ready within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(process)
}

/// Slots before writes (issue 19, item 4): `up` ran `outbox-relay
/// create-slots` for the four sources, each reporting `outcome` ("created
/// at" on a new site, "exists" after), before it started any service.
fn assert_slots_before_services(stack: &ChildProcess, outcome: &str) {
    let logs = stack.logs();
    let position = |needle: &str| {
        logs.iter()
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log of `xtask up`"))
    };
    let slots_ready = position("the relay's replication slots exist");
    // A child's output line starts with its name, e.g. `order-service | `.
    let services = [
        "gateway",
        "order-service",
        "payment-service",
        "delivery-service",
    ];
    let first_service_line = logs
        .iter()
        .position(|line| {
            let line = line.trim_start();
            services
                .iter()
                .any(|s| line.starts_with(&format!("{s} | ")))
        })
        .expect("the services log");
    assert!(
        slots_ready < first_service_line,
        "a service ran before the slots step finished"
    );
    let reported = logs[..slots_ready]
        .iter()
        .filter(|line| line.contains("relay-slots") && line.contains(outcome))
        .count();
    assert_eq!(
        reported,
        4,
        "four sources' slots {outcome}:\n{}",
        logs.join("\n")
    );
}

/// The pid of the process listening on `port` (`ss`).
fn listener_pid(port: u16) -> u32 {
    let output = std::process::Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("nothing listens on port {port}: {text}"))
}

/// Ctrl-C, and the stack's orderly stop.
fn interrupt(process: &mut ChildProcess) {
    let status = process.stop_with(libc::SIGINT, Duration::from_secs(120));
    assert!(status.success(), "`xtask up` stopped with {status}");
    assert!(process.log_contains("stopped"), "no orderly stop");
}

struct Customer {
    token: String,
}

async fn register(http: &reqwest::Client, base: &str, n: usize) -> Customer {
    let email = format!("restart-{n}-{}@example.com", rand_between(0, 60_000));
    let response = http
        .post(format!("{base}/api/register"))
        .json(&json!({"email": email, "password": "correct horse battery", "name": "Restart"}))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 201, "register");
    let body: Value = response.json().await.unwrap();
    Customer {
        token: body["token"].as_str().unwrap().to_owned(),
    }
}

/// Every order of the customer, as the order service lists them, or
/// `None` while the order service does not answer.
async fn try_orders_of(
    http: &reqwest::Client,
    base: &str,
    customer: &Customer,
) -> Option<Vec<Value>> {
    let mut orders = Vec::new();
    for page in 1.. {
        let url = format!("{base}/api/orders?page={page}&page_size=100");
        let body = try_get_json(http, &url, customer).await?;
        orders.extend(body["items"].as_array()?.iter().cloned());
        if page >= body["total_pages"].as_i64()? {
            break;
        }
    }
    Some(orders)
}

/// The customer's balance, or `None` while the payment service does not
/// answer.
async fn try_balance(http: &reqwest::Client, base: &str, customer: &Customer) -> Option<i64> {
    let body = try_get_json(http, &format!("{base}/api/wallet"), customer).await?;
    body["balance_cents"].as_i64()
}

/// The JSON body of a GET of `url` with the customer's token, or `None`
/// unless it answers 200.
async fn try_get_json(http: &reqwest::Client, url: &str, customer: &Customer) -> Option<Value> {
    let response = http
        .get(url)
        .bearer_auth(&customer.token)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json().await.ok()
}

/// Orders of one scenario's burst, customers and concurrency.
const SCENARIO_ORDERS: usize = 40;
const SCENARIO_CUSTOMERS: usize = 4;
const SCENARIO_CONCURRENCY: usize = 8;
/// Each of the burst's tasks waits this long after an accepted order.
const PACE: Duration = Duration::from_millis(200);
/// The fault comes once this many orders of the burst were accepted.
const ACCEPTED_BEFORE_FAULT: usize = 10;
/// Time for every order to end once the burst is over: a killed process
/// waits for its restart, a lost event for the saga re-drive, which comes
/// 30 s after the order's last move, then 60 s and 120 s after that: room
/// for three re-drives (210 s) and the restarts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a scenario does to the stack in the middle of its burst.
enum Fault {
    /// SIGKILL of the process listening on this (default) port; `up`
    /// restarts it.
    Kill(&'static str, u16),
    /// Ctrl-C (a drained stop), then `up` again.
    Restart,
    /// The delivery service killed (its events pile up unread), Ctrl-C
    /// twice (no drain), the broker's data deleted, `up` again: the broker
    /// lost everything, the events not consumed yet included.
    WipeBroker,
    /// The relay frozen (SIGSTOP), the order database's slot dropped, orders
    /// placed meanwhile (their events are in no slot), the relay thawed: it
    /// must refuse to make a new slot on its own; the operator re-creates it
    /// (`up --recreate-slot order`).
    SlotDropped,
}

/// One line of the chaos table.
struct Row {
    scenario: String,
    accepted: usize,
    finished: usize,
    redriven: i64,
    seconds: f64,
}

/// Sum of `saga_redrives_total` on the order service's `/metrics` (0 while
/// it is down).
async fn redrives(site: &Site) -> i64 {
    let url = format!("http://127.0.0.1:{}/metrics", site.port(ORDER));
    let Ok(response) = site.http.get(url).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("saga_redrives_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

/// Places `SCENARIO_ORDERS` orders for `customers`, `SCENARIO_CONCURRENCY`
/// at a time; once `faulted` is set, refusals and broken connections are
/// expected (the gateway or a service is down) and not counted. Answers the
/// accepted orders as (customer index, id).
fn burst(
    site: &Site,
    tokens: Arc<Vec<String>>,
    accepted: Arc<AtomicUsize>,
    faulted: Arc<AtomicBool>,
) -> JoinSet<Vec<(usize, String)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..SCENARIO_CONCURRENCY {
        let (http, base, tokens) = (site.http.clone(), site.base.clone(), Arc::clone(&tokens));
        let (accepted, faulted, next) = (
            Arc::clone(&accepted),
            Arc::clone(&faulted),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= SCENARIO_ORDERS {
                    return ids;
                }
                let customer = n % tokens.len();
                let order = json!({
                    "items": [{"sku": "BOOK-1", "quantity": 1 + n % 3, "unit_price_cents": 1250}],
                    "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin",
                                         "postal_code": "10115", "country": "DE"}
                });
                let response = http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(&tokens[customer])
                    .json(&order)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 202 => {
                        let body: Value = r.json().await.unwrap();
                        ids.push((customer, body["id"].as_str().unwrap().to_owned()));
                        accepted.fetch_add(1, Ordering::Relaxed);
                        // Paced: the burst lasts about a second, so the
                        // fault comes in its middle, not after it.
                        tokio::time::sleep(PACE).await;
                    }
                    Ok(_) | Err(_) if faulted.load(Ordering::Relaxed) => {
                        // Down for a moment: the next order tries again.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(r) => panic!("order {n}: HTTP {}", r.status()),
                    Err(e) => panic!("order {n}: {e}"),
                }
            }
        });
    }
    tasks
}

/// A database of the stack, through PostgreSQL's superuser.
fn database(site: &Site, name: &str) -> TestDatabase {
    TestDatabase {
        name: name.into(),
        url: format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            site.port(POSTGRES)
        ),
    }
}

/// One scenario: a burst of orders from new customers, `fault` once
/// `ACCEPTED_BEFORE_FAULT` were accepted, then every order must end and the
/// money must add up. Answers the scenario's line of the table.
async fn scenario(site: &Site, stack: &mut ChildProcess, name: &str, fault: Fault) -> Row {
    let (base, http) = (&site.base, &site.http);
    // The previous fault is healed: every service ready, the relay streaming.
    for (port, path) in [
        (ORDER, "/ready"),
        (PAYMENT, "/ready"),
        (DELIVERY, "/ready"),
        (GATEWAY, "/ready"),
        (RELAY, "/health"),
    ] {
        let url = format!("http://127.0.0.1:{}{path}", site.port(port));
        wait_until(Duration::from_secs(120), &url, || async {
            let ok = http.get(&url).send().await.ok()?.status() == 200;
            ok.then_some(())
        })
        .await;
    }
    let mut customers = Vec::new();
    for n in 0..SCENARIO_CUSTOMERS {
        customers.push(register(http, base, n).await);
    }
    let tokens: Arc<Vec<String>> = Arc::new(customers.iter().map(|c| c.token.clone()).collect());
    // Re-drives counted by the order service; a restarted one counts from
    // 0, so what the stopped one counted is carried over.
    let mut redrive_base = redrives(site).await;
    let mut redrives_carried = 0;
    let accepted = Arc::new(AtomicUsize::new(0));
    let faulted = Arc::new(AtomicBool::new(false));
    let mut tasks = burst(site, tokens, Arc::clone(&accepted), Arc::clone(&faulted));
    wait_until(
        Duration::from_secs(60),
        "orders accepted before the fault",
        || async { (accepted.load(Ordering::Relaxed) >= ACCEPTED_BEFORE_FAULT).then_some(()) },
    )
    .await;
    faulted.store(true, Ordering::Relaxed);
    let fault_at = Instant::now();
    assert!(
        accepted.load(Ordering::Relaxed) < SCENARIO_ORDERS,
        "{name}: the fault came after the burst"
    );
    match &fault {
        Fault::Kill(process, port) => {
            let pid = listener_pid(site.port(*port));
            // SAFETY: kill(2) on a pid of the stack this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            wait_until(
                Duration::from_secs(120),
                &format!("{process} back"),
                || async {
                    let back = stack.log_contains(&format!("{process} is back"));
                    back.then_some(())
                },
            )
            .await;
            assert!(
                stack.log_contains(&format!(
                    "{process} exited unexpectedly (killed by signal 9)"
                )),
                "{name}: the death is reported"
            );
            assert!(
                stack.is_running(),
                "{name}: the rest of the stack kept running"
            );
        }
        Fault::Restart => {
            redrives_carried += redrives(site).await - redrive_base;
            redrive_base = 0;
            interrupt(stack);
            assert!(
                stack.log_contains("drained in"),
                "the stop drained the sagas in flight"
            );
            *stack = site.up().await;
            assert_slots_before_services(stack, "exists");
        }
        Fault::SlotDropped => {
            let relay = listener_pid(site.port(RELAY));
            // SAFETY: kill(2) on a pid of the stack this test started.
            unsafe { libc::kill(relay as i32, libc::SIGSTOP) };
            let order_db = database(site, "commerce_order").client().await;
            order_db
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = 'outbox_relay_order' AND active_pid IS NOT NULL",
                    &[],
                )
                .await
                .unwrap();
            wait_until(
                Duration::from_secs(30),
                "the slot to be dropped",
                || async {
                    let dropped = order_db
                        .execute(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name = 'outbox_relay_order' AND NOT active",
                            &[],
                        )
                        .await
                        .ok()?;
                    (dropped == 1).then_some(())
                },
            )
            .await;
            // Orders committed now are in no slot's WAL.
            let more = ACCEPTED_BEFORE_FAULT + 10;
            wait_until(
                Duration::from_secs(60),
                "orders placed without a slot",
                || async { (accepted.load(Ordering::Relaxed) >= more).then_some(()) },
            )
            .await;
            // SAFETY: as above.
            unsafe { libc::kill(relay as i32, libc::SIGCONT) };
        }
        Fault::WipeBroker => {
            redrives_carried += redrives(site).await - redrive_base;
            redrive_base = 0;
            let pid = listener_pid(site.port(DELIVERY));
            // SAFETY: kill(2) on a pid of the stack this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            wait_until(Duration::from_secs(10), "the death to be seen", || async {
                stack
                    .log_contains("delivery-service exited unexpectedly")
                    .then_some(())
            })
            .await;
            stack.signal(libc::SIGINT);
            wait_until(Duration::from_secs(10), "the drain to start", || async {
                stack.log_contains("draining").then_some(())
            })
            .await;
            interrupt(stack);
            std::fs::remove_dir_all(site.data.path().join("kafka"))
                .expect("delete the broker's data");
            *stack = site.up().await;
        }
    }
    let mut seen: Vec<(usize, String)> = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        seen.extend(ids.expect("burst task"));
    }
    if matches!(fault, Fault::SlotDropped) {
        // The burst is over, the lost orders placed: re-create the slot as
        // an operator would, after the relay said it was missing.
        let url = format!("http://127.0.0.1:{}/metrics", site.port(RELAY));
        wait_until(
            Duration::from_secs(60),
            "the relay to report the slot missing",
            || async {
                let metrics = http.get(&url).send().await.ok()?.text().await.ok()?;
                metrics
                    .contains("relay_slot_missing{source=\"order\"} 1")
                    .then_some(())
            },
        )
        .await;
        redrives_carried += redrives(site).await - redrive_base;
        redrive_base = 0;
        interrupt(stack);
        *stack = site.up_with(&["--recreate-slot", "order"]).await;
    }

    // Every order of these customers ends (accepted or not: one whose
    // answer was lost in the fault must end too).
    // On failure it says which orders were not final, and what `up` logged.
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    let outcome = loop {
        let mut by_customer = Vec::new();
        let mut pending = Vec::new();
        for customer in &customers {
            match try_orders_of(http, base, customer).await {
                Some(orders) => {
                    pending.extend(
                        orders
                            .iter()
                            .filter(|o| !FINAL.contains(&o["status"].as_str().unwrap()))
                            .map(|o| format!("{} {}", o["id"], o["status"])),
                    );
                    by_customer.push(orders);
                }
                None => pending.push("(the orders could not be listed)".to_owned()),
            }
        }
        if pending.is_empty() {
            break by_customer;
        }
        if Instant::now() >= settle_deadline {
            let logs = stack.logs();
            panic!(
                "{name}: not every order final after {SETTLE_TIMEOUT:?}: {pending:?}\n\
                 --- the last 300 lines of `xtask up` ---\n{}",
                logs[logs.len().saturating_sub(300)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = fault_at.elapsed().as_secs_f64();
    let mut finished = 0;
    for (n, (customer, orders)) in customers.iter().zip(&outcome).enumerate() {
        for (owner, id) in &seen {
            if *owner == n {
                assert!(
                    orders.iter().any(|o| o["id"] == id.as_str()),
                    "{name}: accepted order {id} is not listed"
                );
            }
        }
        finished += orders.len();
        let delivered: i64 = orders
            .iter()
            .filter(|o| o["status"] == "DELIVERY_SCHEDULED")
            .map(|o| o["total_cents"].as_i64().unwrap())
            .sum();
        let wallet = wait_until(Duration::from_secs(60), "the wallet to settle", || async {
            let balance = try_balance(http, base, customer).await?;
            (INITIAL_CREDIT - balance == delivered).then_some(balance)
        })
        .await;
        assert_eq!(
            INITIAL_CREDIT - wallet,
            delivered,
            "{name}: customer {n}'s wallet"
        );
    }
    let twice = query_i64(
        &database(site, "commerce_payment"),
        "SELECT count(*) FROM (SELECT order_id, kind FROM wallet_entries \
         WHERE order_id IS NOT NULL GROUP BY order_id, kind HAVING count(*) > 1) twice",
    )
    .await;
    assert_eq!(twice, 0, "{name}: an order was charged or refunded twice");
    Row {
        scenario: name.to_owned(),
        accepted: seen.len(),
        finished,
        redriven: redrives_carried + redrives(site).await - redrive_base,
        seconds,
    }
}

fn print_table(rows: &[Row]) {
    println!("| scenario | orders accepted | final | re-driven | s to all final |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} |",
            row.scenario, row.accepted, row.finished, row.redriven, row.seconds
        );
    }
}

#[tokio::test]
async fn chaos_each_process_killed_with_sigkill_mid_burst() {
    let (site, mut stack) = Site::start(10..=29).await;
    let mut rows = Vec::new();
    for (name, process, port) in [
        ("relay killed (SIGKILL)", "outbox-relay", RELAY),
        ("order service killed", "order-service", ORDER),
        ("payment service killed", "payment-service", PAYMENT),
        ("delivery service killed", "delivery-service", DELIVERY),
        ("Kafka killed", "kafka", KAFKA),
        ("PostgreSQL killed (postmaster)", "postgres", POSTGRES),
    ] {
        rows.push(scenario(&site, &mut stack, name, Fault::Kill(process, port)).await);
        print_table(&rows);
    }
    interrupt(&mut stack);
}

#[tokio::test]
async fn chaos_stopped_mid_burst_a_broker_losing_its_data_and_a_slot_dropped() {
    let (site, mut stack) = Site::start(30..=49).await;
    assert_slots_before_services(&stack, "created at");
    let mut rows = vec![scenario(&site, &mut stack, "Ctrl-C, `up` again", Fault::Restart).await];
    print_table(&rows);
    rows.push(
        scenario(
            &site,
            &mut stack,
            "stopped without drain, broker data wiped, `up` again",
            Fault::WipeBroker,
        )
        .await,
    );
    print_table(&rows);
    rows.push(
        scenario(
            &site,
            &mut stack,
            "slot dropped while the relay was frozen, re-created by the operator",
            Fault::SlotDropped,
        )
        .await,
    );
    print_table(&rows);
    interrupt(&mut stack);
}
