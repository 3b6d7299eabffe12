//! `cargo xtask up` as a user runs it: stopped with Ctrl-C in the middle of
//! a burst of orders and started again, every order the gateway accepted
//! ends final and every wallet was charged exactly the totals of its
//! customer's DELIVERY_SCHEDULED orders; a service killed with SIGKILL is
//! restarted and its sagas complete. The whole native stack runs, from the
//! binaries the tests use (`COMMERCE_BIN_DIR`), on ports shifted by
//! `--port-offset` and with its data in a directory of the test's own.

use std::{
    collections::BTreeMap,
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
use test_support::{ChildProcess, bin_dir, bin_path, compose::workspace_root, wait_until};
use tokio::task::JoinSet;

const CUSTOMERS: usize = 5;
const ORDERS: usize = 200;
/// Orders in flight at once.
const CONCURRENCY: usize = 20;
/// Ctrl-C comes once this many orders were accepted.
const ACCEPTED_BEFORE_STOP: usize = 40;
const INITIAL_CREDIT: i64 = 100_000;
const FINAL: [&str; 3] = ["DELIVERY_SCHEDULED", "REJECTED", "CANCELLED"];
/// The stack's default ports (xtask/src/up.rs), shifted by the offset.
const DEFAULT_PORTS: [u16; 8] = [55432, 9092, 9093, 8081, 8082, 8083, 8084, 8090];
const GATEWAY: u16 = 8084;
const PAYMENT: u16 = 8082;

/// An offset that leaves every port of the stack free right now.
fn free_port_offset() -> u16 {
    for _ in 0..50 {
        let offset = 100 * rand_between(10, 49);
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
    fn new() -> Site {
        let data = tempfile::tempdir().unwrap();
        // The PostgreSQL account must reach its data directory in here.
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let offset = free_port_offset();
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

    async fn up(&self) -> ChildProcess {
        up(self.data.path(), self.offset).await
    }

    fn port(&self, default: u16) -> u16 {
        default + self.offset
    }
}

/// `cargo xtask up` (the built binary) until it says the stack is ready.
async fn up(data_dir: &Path, offset: u16) -> ChildProcess {
    let args = [
        "up".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
        "--port-offset".to_owned(),
        offset.to_string(),
    ];
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
        assert!(
            process.is_running(),
            "`xtask up` exited during start-up: {:?}",
            process.try_wait()
        );
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "`xtask up` was not ready within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    process
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

/// Places one order and waits (`Prefer: wait`) until it is final.
async fn place_and_settle(http: &reqwest::Client, base: &str, customer: &Customer) -> String {
    let response = http
        .post(format!("{base}/api/orders"))
        .bearer_auth(&customer.token)
        .json(&json!({
            "items": [{"sku": "BOOK-1", "quantity": 1, "unit_price_cents": 1250}],
            "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin",
                                 "postal_code": "10115", "country": "DE"}
        }))
        .send()
        .await
        .expect("place an order");
    assert_eq!(response.status(), 202, "place an order");
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(Duration::from_secs(60), "the order to be final", || async {
        let order: Value = http
            .get(format!("{base}/api/orders/{id}?until=settled"))
            .bearer_auth(&customer.token)
            .header("Prefer", "wait=5")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let status = order["status"].as_str()?.to_owned();
        FINAL.contains(&status.as_str()).then_some(status)
    })
    .await
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

/// Every order of the customer, as the order service lists them.
async fn orders_of(http: &reqwest::Client, base: &str, customer: &Customer) -> Vec<Value> {
    let mut orders = Vec::new();
    for page in 1.. {
        let response = http
            .get(format!("{base}/api/orders?page={page}&page_size=100"))
            .bearer_auth(&customer.token)
            .send()
            .await
            .expect("list orders");
        assert_eq!(response.status(), 200, "list orders");
        let body: Value = response.json().await.unwrap();
        orders.extend(body["items"].as_array().unwrap().iter().cloned());
        if page >= body["total_pages"].as_i64().unwrap() {
            break;
        }
    }
    orders
}

async fn balance(http: &reqwest::Client, base: &str, customer: &Customer) -> i64 {
    let response = http
        .get(format!("{base}/api/wallet"))
        .bearer_auth(&customer.token)
        .send()
        .await
        .expect("wallet");
    assert_eq!(response.status(), 200, "wallet");
    let body: Value = response.json().await.unwrap();
    body["balance_cents"].as_i64().unwrap()
}

#[tokio::test]
async fn ctrl_c_mid_burst_then_up_again_leaves_every_order_final_and_every_wallet_exact() {
    let site = Site::new();
    let (base, http) = (&site.base, &site.http);
    let mut stack = site.up().await;
    let mut customers = Vec::new();
    for n in 0..CUSTOMERS {
        customers.push(register(http, base, n).await);
    }
    let tokens: Arc<Vec<String>> = Arc::new(customers.iter().map(|c| c.token.clone()).collect());

    // The burst: 200 orders, 20 at a time, until the gateway stops answering.
    let accepted = Arc::new(AtomicUsize::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut burst = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (http, base, tokens) = (http.clone(), base.clone(), Arc::clone(&tokens));
        let (accepted, stopping, next) = (
            Arc::clone(&accepted),
            Arc::clone(&stopping),
            Arc::clone(&next),
        );
        burst.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ORDERS {
                    return ids;
                }
                let token = &tokens[n % CUSTOMERS];
                let order = json!({
                    "items": [{"sku": "BOOK-1", "quantity": 1 + n % 3, "unit_price_cents": 1250}],
                    "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin",
                                         "postal_code": "10115", "country": "DE"}
                });
                let response = http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", format!("restart-{n}"))
                    .json(&order)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 202 => {
                        let body: Value = r.json().await.unwrap();
                        ids.push((n % CUSTOMERS, body["id"].as_str().unwrap().to_owned()));
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused while the stack stops: not accepted, fine.
                    Ok(r) if stopping.load(Ordering::Relaxed) => drop(r),
                    Ok(r) => panic!("order {n}: HTTP {}", r.status()),
                    Err(_) if stopping.load(Ordering::Relaxed) => return ids,
                    Err(e) => panic!("order {n}: {e}"),
                }
            }
        });
    }
    wait_until(
        Duration::from_secs(60),
        "orders accepted before the Ctrl-C",
        || async { (accepted.load(Ordering::Relaxed) >= ACCEPTED_BEFORE_STOP).then_some(()) },
    )
    .await;
    stopping.store(true, Ordering::Relaxed);
    let interrupted_at = Instant::now();
    interrupt(&mut stack);
    assert!(
        stack.log_contains("drained in"),
        "the stop drained the sagas in flight"
    );
    let mut seen: Vec<(usize, String)> = Vec::new();
    while let Some(ids) = burst.join_next().await {
        seen.extend(ids.expect("burst task"));
    }
    println!(
        "{} orders accepted, Ctrl-C after {ACCEPTED_BEFORE_STOP}; the stack stopped in {:.1} s",
        seen.len(),
        interrupted_at.elapsed().as_secs_f64()
    );
    assert!(seen.len() < ORDERS, "the Ctrl-C came after the burst ended");

    let mut stack = site.up().await;
    let restarted_at = Instant::now();
    let mut unfinished = 0;
    for customer in &customers {
        unfinished += orders_of(http, base, customer)
            .await
            .iter()
            .filter(|o| !FINAL.contains(&o["status"].as_str().unwrap()))
            .count();
    }
    println!("{unfinished} orders not final yet when the stack was ready again");
    let outcome = wait_until(
        Duration::from_secs(120),
        "every order final after the restart",
        || async {
            let mut by_customer = Vec::new();
            for customer in &customers {
                let orders = orders_of(http, base, customer).await;
                if orders
                    .iter()
                    .any(|o| !FINAL.contains(&o["status"].as_str().unwrap()))
                {
                    return None;
                }
                by_customer.push(orders);
            }
            Some(by_customer)
        },
    )
    .await;
    println!(
        "every order final {:.1} s after the stack was ready again",
        restarted_at.elapsed().as_secs_f64()
    );

    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for (n, (customer, orders)) in customers.iter().zip(&outcome).enumerate() {
        for (owner, id) in &seen {
            if *owner == n {
                assert!(
                    orders.iter().any(|o| o["id"] == id.as_str()),
                    "accepted order {id} is not listed"
                );
            }
        }
        let delivered: i64 = orders
            .iter()
            .filter(|o| o["status"] == "DELIVERY_SCHEDULED")
            .map(|o| o["total_cents"].as_i64().unwrap())
            .sum();
        for order in orders {
            *statuses
                .entry(order["status"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        // The wallet settles with the saga's last event.
        let wallet = wait_until(Duration::from_secs(30), "the wallet to settle", || async {
            let balance = balance(http, base, customer).await;
            (INITIAL_CREDIT - balance == delivered).then_some(balance)
        })
        .await;
        assert_eq!(INITIAL_CREDIT - wallet, delivered, "customer {n}'s wallet");
    }
    println!("final statuses: {statuses:?}");
    assert!(statuses.get("DELIVERY_SCHEDULED").copied().unwrap_or(0) > 0);
    interrupt(&mut stack);
}

#[tokio::test]
async fn a_service_killed_with_sigkill_is_restarted_and_its_sagas_complete() {
    let site = Site::new();
    let (base, http) = (&site.base, &site.http);
    let mut stack = site.up().await;
    let customer = register(http, base, 0).await;
    assert_eq!(
        place_and_settle(http, base, &customer).await,
        "DELIVERY_SCHEDULED"
    );

    let payment = listener_pid(site.port(PAYMENT));
    // SAFETY: kill(2) on a pid of the stack this test started.
    unsafe { libc::kill(payment as i32, libc::SIGKILL) };
    // The order waits for the payment service to come back.
    assert_eq!(
        place_and_settle(http, base, &customer).await,
        "DELIVERY_SCHEDULED"
    );
    assert!(
        stack.log_contains("payment-service exited unexpectedly (killed by signal 9)"),
        "the death is reported"
    );
    assert!(stack.log_contains("payment-service is back"));
    assert_ne!(listener_pid(site.port(PAYMENT)), payment, "a new process");
    assert!(stack.is_running(), "the rest of the stack kept running");
    assert_eq!(
        INITIAL_CREDIT - balance(http, base, &customer).await,
        2 * 1250,
        "both orders charged once"
    );
    interrupt(&mut stack);
}
