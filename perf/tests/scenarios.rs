//! Every scenario end to end against a small in-process fake of the gateway:
//! registration, tokens, orders that become final after a short delay, lists,
//! the wallet, `Prefer: wait` on one order. Checks the tool's own plumbing,
//! not the real system.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use perf::cli::Cli;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How long a fake order stays PENDING before it is DELIVERY_SCHEDULED.
const SAGA_TIME: Duration = Duration::from_millis(30);

#[derive(Default)]
struct Fake {
    users: u64,
    /// order id -> (token, created)
    orders: HashMap<String, (String, Instant)>,
}

/// A final order says its saga took [`SAGA_TIME`] inside the system.
fn order_json(id: &str, created: Instant) -> Value {
    let (status, updated_at) = if created.elapsed() >= SAGA_TIME {
        ("DELIVERY_SCHEDULED", "2026-11-25T13:00:00.030Z")
    } else {
        ("PENDING", "2026-11-25T13:00:00.000Z")
    };
    json!({
        "id": id, "status": status, "reason": null, "total_cents": 100,
        "created_at": "2026-11-25T13:00:00.000Z", "updated_at": updated_at,
    })
}

fn route(fake: &Mutex<Fake>, method: &str, path: &str, token: &str) -> (u16, Value) {
    let mut fake = fake.lock().unwrap();
    let (route, _query) = path.split_once('?').unwrap_or((path, ""));
    match (method, route) {
        ("GET", "/api/health") => (200, json!({"status": "ok"})),
        ("POST", "/api/register") => {
            fake.users += 1;
            (201, json!({"token": format!("user-{}", fake.users)}))
        }
        ("GET", "/api/products") => (
            200,
            json!({"items": [
                {"sku": "SKU-PEN-003", "name": "Pencil", "price_cents": 19, "active": true},
                {"sku": "BOOK-1", "name": "Book", "price_cents": 1250, "active": true}
            ], "page": 1, "page_size": 100, "total_items": 2, "total_pages": 1}),
        ),
        (_, _) if token.is_empty() => (401, json!({"code": "UNAUTHORIZED", "message": "no token"})),
        ("POST", "/api/orders") => {
            let id = uuid::Uuid::new_v4().to_string();
            fake.orders
                .insert(id.clone(), (token.to_string(), Instant::now()));
            (
                202,
                json!({"id": id, "status": "PENDING", "total_cents": 100}),
            )
        }
        ("GET", "/api/orders") => {
            let items: Vec<Value> = fake
                .orders
                .iter()
                .filter(|(_, (owner, _))| owner == token)
                .map(|(id, (_, created))| order_json(id, *created))
                .collect();
            // One page holds everything; later pages are empty.
            let page_one = path.contains("page=1&") || !path.contains("page=");
            (200, json!({"items": if page_one { items } else { vec![] }}))
        }
        ("POST", cancel) if cancel.ends_with("/cancel") => {
            (202, json!({"id": "x", "status": "DELIVERY_SCHEDULED"}))
        }
        ("GET", "/api/wallet") => (200, json!({"balance_cents": 100000})),
        ("POST", "/api/wallet/top-up") => (200, json!({"balance_cents": 200000})),
        ("GET", order) => match order
            .strip_prefix("/api/orders/")
            .and_then(|id| fake.orders.get(id).map(|o| (id, o)))
        {
            Some((id, (owner, created))) if owner == token => (200, order_json(id, *created)),
            _ => (
                404,
                json!({"code": "NOT_FOUND", "message": "no such order"}),
            ),
        },
        _ => (404, json!({"code": "NOT_FOUND", "message": "no route"})),
    }
}

/// Serves HTTP/1.1 with keep-alive on a free port; returns the base URL.
async fn spawn_fake_gateway() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = Arc::new(Mutex::new(Fake::default()));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let fake = fake.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = request_line.split_whitespace();
                    let (method, target) = (
                        parts.next().unwrap_or("").to_string(),
                        parts.next().unwrap_or("").to_string(),
                    );
                    // A waiting read asks `?until=settled`: the fake's orders
                    // change once, so it is answered when the order is final.
                    let path = match target.split_once('?') {
                        Some((path, "until=settled")) => path.to_string(),
                        _ => target,
                    };
                    let (mut length, mut token, mut prefer) =
                        (0usize, String::new(), String::new());
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').unwrap_or((header, ""));
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "authorization" => {
                                token = value.trim().trim_start_matches("Bearer ").to_string()
                            }
                            "prefer" => prefer = value.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    // `Prefer: wait` on one order: answer when it becomes final.
                    let created = path
                        .strip_prefix("/api/orders/")
                        .filter(|_| method == "GET" && prefer.starts_with("wait="))
                        .and_then(|id| fake.lock().unwrap().orders.get(id).map(|o| o.1));
                    let applied = match created {
                        Some(created) => {
                            tokio::time::sleep(SAGA_TIME.saturating_sub(created.elapsed())).await;
                            format!("preference-applied: {prefer}\r\n")
                        }
                        None => String::new(),
                    };
                    let (status, answer) = route(&fake, &method, &path, &token);
                    let answer = answer.to_string();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{applied}content-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if write.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Runs `perf load` with `command` (a scenario and its flags, separated by
/// spaces) against a fake gateway of its own; the report and its HTML file.
async fn run(command: &str) -> (perf::report::Report, std::path::PathBuf) {
    let gateway = spawn_fake_gateway().await;
    let dir =
        std::env::temp_dir().join(format!("perf-scenarios-{}", uuid::Uuid::new_v4().simple()));
    let port = gateway.rsplit(':').next().unwrap().to_string();
    let mut argv = vec!["load".to_string()];
    argv.extend(command.split_whitespace().map(String::from));
    argv.extend([
        "--gateway".into(),
        gateway,
        "--report-dir".into(),
        dir.display().to_string(),
        "--procs".into(),
        format!("fake-gateway={port}"),
    ]);
    let cli = Cli::parse_from(&argv);
    perf::run::execute(&cli, argv.join(" ")).await.unwrap()
}

fn kind<'a>(report: &'a perf::report::Report, name: &str) -> &'a perf::metrics::KindSummary {
    report
        .measured
        .kinds
        .iter()
        .find(|k| k.kind == name)
        .unwrap_or_else(|| panic!("no {name} requests"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_follows_every_order_to_its_end() {
    let (report, html) = run(concat!(
        "saga --rate 100 --duration 2 --users 3",
        " --poll-interval-ms 10 --wait-s 0 --cancel-scheduled"
    ))
    .await;
    assert_eq!(kind(&report, "cancel_order").ok, 200);
    assert!(kind(&report, "get_order").ok >= 200);
    assert_eq!(report.sagas_started, Some(200));
    assert_eq!(report.measured.saga.finished, 200);
    assert_eq!(
        report.measured.saga.by_status["DELIVERY_SCHEDULED"].count,
        200
    );
    let completion = report.measured.saga.completion;
    assert!(
        completion.p50_ms >= SAGA_TIME.as_millis() as f64 && completion.p99_ms < 500.0,
        "{completion:?}"
    );
    assert!(
        report.checks.iter().all(|c| c.passed),
        "{:?}",
        report.checks
    );
    assert_eq!(kind(&report, "place_order").ok, 200);
    // Set-up: the catalog read (public), then the registrations.
    let setup: Vec<&str> = report
        .setup
        .as_ref()
        .unwrap()
        .kinds
        .iter()
        .map(|k| k.kind.as_str())
        .collect();
    assert_eq!(setup, ["list_products", "register"]);
    // The fake gateway is this test process: found by its port.
    let fake = report
        .processes
        .iter()
        .find(|p| p.name == "fake-gateway")
        .unwrap();
    assert!(fake.matched_by.starts_with("port"), "{fake:?}");
    assert!(fake.rss_max_mb > 0.0);
    assert!(
        std::fs::read_to_string(&html)
            .unwrap()
            .contains("Saga completion")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_with_prefer_wait_reads_each_order_once_when_it_ends() {
    let (report, _) = run("saga --rate 100 --duration 2 --users 3 --wait-s 2").await;
    assert_eq!(report.measured.saga.finished, 200);
    // The fake answers a waiting read when the order is final: one read each.
    assert_eq!(kind(&report, "wait_order").ok, 200);
    assert!(report.measured.kinds.iter().all(|k| k.kind != "get_order"));
    let completion = report.measured.saga.completion;
    assert!(
        completion.p50_ms >= SAGA_TIME.as_millis() as f64 && completion.p50_ms < 200.0,
        "{completion:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_runs_the_seed_scenario_without_errors() {
    let (report, _) = run("light --users 3 --iterations 4 --ramp 0.3 --pause-ms 5").await;
    assert_eq!(kind(&report, "register").count, 3);
    assert_eq!(kind(&report, "place_order").count, 12);
    assert_eq!(kind(&report, "list_orders").count, 12);
    assert_eq!(report.measured.total.errors, 0);
    assert!(report.checks[0].passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_steps_up_and_checks_final_statuses() {
    let (report, _) =
        run("saturation --rate 50 --step 50 --max-rate 150 --duration 1 --users 4").await;
    let rates: Vec<f64> = report.steps.iter().map(|s| s.target_rate).collect();
    assert_eq!(rates, vec![50.0, 100.0, 150.0]);
    assert_eq!(report.max_rate_held, Some(150.0));
    assert_eq!(report.steps[1].placed, 100);
    assert_eq!(report.steps[2].final_statuses["DELIVERY_SCHEDULED"], 150);
    let sagas = report.steps[2].sagas.expect("server-side saga times");
    assert_eq!(sagas.count, 150);
    assert!((sagas.p99_ms - 30.0).abs() < 0.1, "{sagas:?}");
    let check = report
        .checks
        .iter()
        .find(|c| c.name.starts_with("every saga"))
        .unwrap();
    assert!(check.passed, "{check:?}");
    assert!(check.detail.contains("every order was final"), "{check:?}");
    // The fake's sagas take 30 ms at any rate: they keep up with every step.
    assert_eq!(report.max_rate_sagas_kept_up, Some(150.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_is_mostly_reads() {
    let (report, _) = run("mixed --rate 200 --duration 2 --users 5 --write-share 0.1").await;
    assert_eq!(report.measured.total.count, 400);
    assert_eq!(report.measured.total.errors, 0);
    let writes = kind(&report, "place_order").count as f64 / 400.0;
    assert!((0.03..0.2).contains(&writes), "write share {writes}");
    assert!(kind(&report, "get_order").count > 100);
}
