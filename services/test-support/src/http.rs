//! Shorthands for a test's HTTP requests and the services' JSON error
//! answers: a transport error or a body that does not parse fails the test.

use std::{fmt::Debug, future::Future};

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// A valid shipping address, as the order API takes it.
pub fn shipping_address() -> Value {
    serde_json::json!({
        "name": "Ada Lovelace",
        "street": "12 St James's Square",
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB"
    })
}

/// [`RequestBuilder`] shorthands: send, and read the body, or fail the test.
pub trait SendExt {
    /// Sends the request; a transport error fails the test.
    fn sent(self) -> impl Future<Output = Response> + Send;

    /// Sends the request and reads its body as JSON, whatever the status.
    fn json_body(self) -> impl Future<Output = Value> + Send;

    /// Sends the request and reads its body as text, whatever the status.
    fn text_body(self) -> impl Future<Output = String> + Send;
}

impl SendExt for RequestBuilder {
    async fn sent(self) -> Response {
        self.send().await.unwrap()
    }

    async fn json_body(self) -> Value {
        self.sent().await.json().await.unwrap()
    }

    async fn text_body(self) -> String {
        self.sent().await.text().await.unwrap()
    }
}

/// Asserts an error answer's status and JSON `code`; returns its body.
pub async fn assert_error_code<S>(response: Response, status: S, code: &str) -> Value
where
    StatusCode: PartialEq<S>,
    S: Debug,
{
    let url = response.url().clone();
    assert_eq!(response.status(), status, "status of {url}");
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["code"], code, "code in {body} from {url}");
    body
}

/// Asserts an error response: status, code, a message, and exactly these
/// `(field, code)` pairs of field errors (none for other errors).
pub async fn assert_error(response: Response, status: u16, code: &str, fields: &[(&str, &str)]) {
    let body = assert_error_code(response, status, code).await;
    assert!(body["message"].is_string(), "message in {body}");
    let got: Vec<(String, String)> = body["fields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|f| {
                    (
                        f["field"].as_str().unwrap().to_owned(),
                        f["code"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<(String, String)> = fields
        .iter()
        .map(|(f, c)| ((*f).to_owned(), (*c).to_owned()))
        .collect();
    assert_eq!(got, want, "field errors in {body}");
}
