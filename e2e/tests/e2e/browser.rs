//! Swagger UI in a real headless Chromium, served by the gateway binary: the
//! page loads from the gateway alone, lists every operation of the merged
//! document, and a user can register, log in, authorize, place an order and
//! read it back through "Try it out" (against the order-service binary).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use fantoccini::{Client, Locator, elements::Element, key::Key};
use serde_json::{Value, json};
use test_support::{Browser, SendExt, Service, Stack};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn swagger_ui_lists_every_operation_and_drives_the_order_flow() {
    // Only the HTTP API is exercised: no saga consumers, no broker of its own.
    let stack = Stack::builder("browser")
        .services(&[Service::Order, Service::Gateway])
        .shared_broker()
        .env(Service::Order, "APP__SAGA__ENABLED", "false")
        .start()
        .await;
    let gateway = stack.address(Service::Gateway);
    let doc: Value = stack
        .http()
        .get(stack.url(Service::Gateway, "/openapi.json"))
        .json_body()
        .await;
    let mut expected: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    expected.sort();

    let (_browser, client) = Browser::start().await;
    let result = drive(&client, &gateway, &expected).await;
    let shot = save_screenshot(&client).await;
    client.close().await.ok();
    if let Err(error) = result {
        panic!("{error} (screenshot: {})", shot.display());
    }
    println!("screenshot: {}", shot.display());
}

type Outcome = Result<(), String>;

/// A server on a port of its own that counts the connections made to it
/// (each answered with an empty 404): a page that must not use it.
struct ForeignServer {
    base: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ForeignServer {
    async fn start() -> ForeignServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        ForeignServer { base, hits, task }
    }
}

impl Drop for ForeignServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(client: &Client, address: &str, expected: &[(String, String)]) -> Outcome {
    client
        .set_window_size(1400, 2400)
        .await
        .map_err(|e| e.to_string())?;
    open_swagger_ui(client, &format!("{address}/swagger-ui.html")).await?;

    // Every operation of the document is on the page.
    let listed = run_script(
        client,
        "return Array.from(document.querySelectorAll('.opblock')).map(o => [
                o.querySelector('.opblock-summary-method').textContent.trim(),
                o.querySelector('.opblock-summary-path').getAttribute('data-path')]);",
    )
    .await?;
    let mut listed: Vec<(String, String)> =
        serde_json::from_value(listed).map_err(|e| e.to_string())?;
    listed.sort();
    if listed != expected {
        return Err(format!("listed {listed:?}, document has {expected:?}"));
    }
    // Nothing was fetched from anywhere but the gateway.
    let resources = run_script(
        client,
        "return performance.getEntriesByType('resource').map(e => e.name);",
    )
    .await?;
    let foreign: Vec<&Value> = resources
        .as_array()
        .unwrap()
        .iter()
        .filter(|url| !url.as_str().unwrap_or_default().starts_with(address))
        .collect();
    if !foreign.is_empty() {
        return Err(format!("the page loaded foreign resources: {foreign:?}"));
    }
    let credentials = json!({"email": "swagger@example.com", "password": "correct horse battery"});
    let registration = json!({"email": "swagger@example.com", "password": "correct horse battery", "name": "Swagger"});
    let (status, body) =
        try_it_out(client, "post", "/api/register", &[], Some(&registration)).await?;
    expect_status(status, 201, "register", &body)?;
    let (status, body) = try_it_out(client, "post", "/api/login", &[], Some(&credentials)).await?;
    expect_status(status, 200, "login", &body)?;
    let token = body["token"]
        .as_str()
        .ok_or("login answered no token")?
        .to_owned();

    authorize(client, &token).await?;

    let order = json!({
        "items": [{"sku": "BOOK-1", "quantity": 2, "unit_price_cents": 1250}],
        "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "London",
                             "postal_code": "N1 9GU", "country": "GB"}
    });
    let (status, placed) = try_it_out(
        client,
        "post",
        "/api/orders",
        &[("Idempotency-Key", "swagger-ui-test-1")],
        Some(&order),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(format!("place order answered {status}: {placed}"));
    }
    let order_id = placed["id"]
        .as_str()
        .ok_or(format!("no order id in {placed}"))?
        .to_owned();

    let (status, fetched) = try_it_out(
        client,
        "get",
        "/api/orders/{id}",
        &[("id", &order_id)],
        None,
    )
    .await?;
    expect_status(status, 200, "get order", &fetched)?;
    if fetched["id"] != order_id.as_str() || fetched["total_cents"] != 2500 {
        return Err(format!("unexpected order {fetched}"));
    }
    Ok(())
}

fn expect_status(status: u16, expected: u16, what: &str, body: &Value) -> Outcome {
    if status == expected {
        Ok(())
    } else {
        Err(format!(
            "{what} answered {status}, expected {expected}: {body}"
        ))
    }
}

/// Expands an operation, presses "Try it out", fills parameters and body,
/// executes, and reads the live response (status and JSON body).
async fn try_it_out(
    client: &Client,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let what = format!("{method} {path}");
    let block = client
        .find(Locator::XPath(&format!(
            "//div[contains(@class,'opblock-{method}')][.//*[@data-path='{path}']]"
        )))
        .await
        .map_err(|e| format!("{what}: operation not found: {e}"))?;
    let summary = block
        .find(Locator::Css(".opblock-summary"))
        .await
        .map_err(|e| e.to_string())?;
    summary
        .click()
        .await
        .map_err(|e| format!("{what}: expand: {e}"))?;
    let try_out = wait_in(&block, ".try-out__btn", &what).await?;
    try_out
        .click()
        .await
        .map_err(|e| format!("{what}: try it out: {e}"))?;

    for (name, value) in params {
        let input = wait_in(
            &block,
            &format!("tr[data-param-name='{name}'] input"),
            &what,
        )
        .await?;
        input
            .send_keys(value)
            .await
            .map_err(|e| format!("{what}: {name}: {e}"))?;
    }
    if let Some(body) = body {
        let textarea = wait_in(&block, "textarea.body-param__text", &what).await?;
        textarea
            .send_keys(&(Key::Control + "a"))
            .await
            .map_err(|e| e.to_string())?;
        textarea
            .send_keys(&Key::Backspace.to_string())
            .await
            .map_err(|e| e.to_string())?;
        textarea
            .send_keys(&body.to_string())
            .await
            .map_err(|e| format!("{what}: body: {e}"))?;
    }
    let execute = wait_in(&block, "button.execute", &what).await?;
    execute
        .click()
        .await
        .map_err(|e| format!("{what}: execute: {e}"))?;

    // The live response renders in steps: wait until status and body are filled in.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, text) = loop {
        let status = text_of(&block, ".live-responses-table tbody .response-col_status").await;
        let text = text_of(
            &block,
            ".live-responses-table tbody .response-col_description pre",
        )
        .await;
        if let (Ok(status), false) = (status.parse::<u16>(), text.is_empty()) {
            break (status, text);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{what}: no response shown (status {status:?})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Opens `url` and waits until Swagger UI rendered an operation.
async fn open_swagger_ui(client: &Client, url: &str) -> Outcome {
    client.goto(url).await.map_err(|e| e.to_string())?;
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(".opblock"))
        .await
        .map_err(|e| format!("no operation rendered: {e}"))?;
    Ok(())
}

/// What `script` returns in the page, or the error as text.
async fn run_script(client: &Client, script: &str) -> Result<Value, String> {
    client
        .execute(script, vec![])
        .await
        .map_err(|e| e.to_string())
}

/// Enters the token in the Authorize dialog (http bearer scheme).
async fn authorize(client: &Client, token: &str) -> Outcome {
    let open = client
        .find(Locator::Css(".auth-wrapper .authorize"))
        .await
        .map_err(|e| format!("no Authorize button: {e}"))?;
    open.click().await.map_err(|e| e.to_string())?;
    let input = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(".modal-ux input"))
        .await
        .map_err(|e| format!("no token input in the Authorize dialog: {e}"))?;
    input.send_keys(token).await.map_err(|e| e.to_string())?;
    let confirm = client
        .find(Locator::Css(".modal-ux .auth-btn-wrapper .authorize"))
        .await
        .map_err(|e| e.to_string())?;
    confirm.click().await.map_err(|e| e.to_string())?;
    let close = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(".modal-ux .btn-done, .modal-ux .close-modal"))
        .await
        .map_err(|e| e.to_string())?;
    close.click().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The trimmed text of the first match; empty when it is absent.
async fn text_of(scope: &Element, css: &str) -> String {
    match scope.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default().trim().to_owned(),
        Err(_) => String::new(),
    }
}

async fn wait_in(scope: &Element, css: &str, what: &str) -> Result<Element, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(element) = scope.find(Locator::Css(css)).await {
            return Ok(element);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{what}: `{css}` did not appear"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `target/test-artifacts/swagger-ui.png` (next to this test's target tmp dir).
async fn save_screenshot(client: &Client) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let path = dir.join("gateway-swagger-ui.png");
    match client.screenshot().await {
        Ok(png) => std::fs::write(&path, png).expect("write screenshot"),
        Err(error) => eprintln!("no screenshot: {error}"),
    }
    path
}

/// Issue 21, item 9, in a real browser: a link with `?url=` does not make
/// the page fetch a foreign document, and a token entered in "Authorize" is
/// not kept in the browser's storage.
#[tokio::test]
async fn swagger_ui_ignores_a_foreign_url_and_keeps_no_token() {
    let evil = ForeignServer::start().await;
    let stack = Stack::builder("browser_foreign")
        .service(Service::Gateway)
        .shared_broker()
        .start()
        .await;
    let gateway = stack.address(Service::Gateway);
    let (_browser, client) = Browser::start().await;
    let result = async {
        let url = format!(
            "{}/swagger-ui.html?url={}/openapi.json&configUrl={}/config.json",
            gateway, evil.base, evil.base
        );
        open_swagger_ui(&client, &url).await?;
        let fetched = run_script(
            &client,
            "return performance.getEntriesByType('resource').map(e => e.name)
                    .concat([location.href]);",
        )
        .await?;
        let foreign: Vec<&Value> = fetched
            .as_array()
            .unwrap()
            .iter()
            .filter(|url| !url.as_str().unwrap_or_default().starts_with(&gateway))
            .collect();
        if !foreign.is_empty() || fetched.to_string().contains(&evil.base) {
            return Err(format!("the page used the foreign address: {fetched}"));
        }
        authorize(&client, "a-token-that-must-not-be-stored").await?;
        let stored = run_script(
            &client,
            "return JSON.stringify(Object.assign({}, window.localStorage)) +
                    JSON.stringify(Object.assign({}, window.sessionStorage));",
        )
        .await?;
        if stored
            .to_string()
            .contains("a-token-that-must-not-be-stored")
        {
            return Err(format!("the token was stored: {stored}"));
        }
        Ok::<_, String>(())
    }
    .await;
    client.close().await.ok();
    if let Err(error) = result {
        panic!("{error}");
    }
    assert_eq!(
        evil.hits.load(Ordering::SeqCst),
        0,
        "the foreign server was asked"
    );
}
