//! The HTTP image-API generator against a scripted server on 127.0.0.1.

mod generator_support;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Duration;

use base64::Engine;
use kka_shared::config::Config;
use kka_worker::generator::http_image::HttpImageGenerator;
use kka_worker::generator::{anomaly_seed, AnomalyPlan, Batch, Generator, GeneratorError};
use kka_worker::knowledge::http::Backoff;
use kka_worker::knowledge::Concept;
use tch::Tensor;

use generator_support::{synthetic_batch, StubResponse, StubServer};

const FAST: Backoff = Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(20) };

fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(width, height, image::Rgb(rgb)));
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

fn b64_reply(bytes: &[u8]) -> StubResponse {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    StubResponse::json(200, &serde_json::json!({"created": 1, "data": [{"b64_json": encoded}]}))
}

fn generator(server: &StubServer, runtime: &tokio::runtime::Runtime, extra: &str) -> HttpImageGenerator {
    let config = Config::from_toml(&format!(
        "[generator]\nkind = \"http-image\"\nimage_api_url = \"{}\"\nimage_api_max_attempts = 2\nimage_api_concurrency = 1\nimage_api_timeout_secs = 2\nimage_api_key_env = \"KKA_TEST_IMAGE_KEY_UNSET\"\n{extra}",
        server.base_url()
    ))
    .unwrap();
    HttpImageGenerator::new(&config.generator, runtime.handle().clone()).unwrap().with_backoff(FAST)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn inputs(count: usize, channels: usize) -> (Vec<AnomalyPlan>, Vec<Concept>, Tensor) {
    let concepts = vec![Concept::new("c", "a coat with a torn sleeve", "erase", &BTreeMap::new(), None, None).unwrap()];
    let plans = (0..count)
        .map(|i| AnomalyPlan { index: i as u32, seed: anomaly_seed(0, i as u32), concept: 0, severity: 0.5, source_row: i, donor_row: i })
        .collect();
    (plans, concepts, synthetic_batch(count, channels, 28, 28))
}

fn run(generator: &mut HttpImageGenerator, count: usize, channels: usize) -> Result<Tensor, GeneratorError> {
    let (plans, concepts, sources) = inputs(count, channels);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &sources };
    generator.generate(&batch)
}

#[test]
fn generations_decode_and_resize() {
    let runtime = runtime();
    let server = StubServer::start(vec![b64_reply(&png(64, 48, [255, 255, 255]))]);
    let mut generator = generator(&server, &runtime, "image_api_mode = \"generations\"\n");
    assert!(!generator.uses_source());

    let output = run(&mut generator, 2, 1).unwrap();
    assert_eq!(output.size(), vec![2, 1, 28, 28]);
    assert!((output.min().double_value(&[]) - 1.0).abs() < 1e-6);

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/v1/images/generations");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert!(body["prompt"].as_str().unwrap().starts_with("a coat with a torn sleeve"), "{body}");
    assert_eq!(body["model"], "gpt-image-1");
    assert_eq!(body["size"], "1024x1024");
}

#[test]
fn edits_upload_the_source_as_png() {
    let runtime = runtime();
    let server = StubServer::start(vec![b64_reply(&png(32, 32, [255, 0, 0]))]);
    let mut generator = generator(&server, &runtime, "image_api_mode = \"edits\"\n");
    assert!(generator.uses_source());

    let output = run(&mut generator, 1, 3).unwrap();
    assert_eq!(output.size(), vec![1, 3, 28, 28]);
    assert!((output.double_value(&[0, 0, 5, 5]) - 1.0).abs() < 1e-6, "red channel");
    assert!(output.double_value(&[0, 1, 5, 5]).abs() < 1e-6, "green channel");

    let request = &server.requests()[0];
    assert_eq!(request.path, "/v1/images/edits");
    assert!(request.header("content-type").unwrap().starts_with("multipart/form-data"));
    let body = String::from_utf8_lossy(&request.body);
    assert!(body.contains("name=\"image\""), "{body}");
    assert!(body.contains("name=\"prompt\""), "{body}");
    assert!(request.body.windows(4).any(|window| window == b"\x89PNG"), "the source is uploaded as PNG");
}

#[test]
fn url_responses_are_fetched() {
    let runtime = runtime();
    let server = StubServer::start(vec![StubResponse::raw(200, "image/png", png(28, 28, [0, 0, 0]))]);
    let url = format!("http://{}/files/anomaly.png", server.addr);
    // The first response points at the second, which the stub serves next.
    let pointer = StubServer::start(vec![StubResponse::json(200, &serde_json::json!({"data": [{"url": url}]}))]);
    let mut generator = generator(&pointer, &runtime, "image_api_mode = \"generations\"\n");
    let output = run(&mut generator, 1, 1).unwrap();
    assert!(output.max().double_value(&[]) < 1e-6);
    assert_eq!(server.requests()[0].path, "/files/anomaly.png");
}

#[test]
fn corrupt_image_is_rejected_after_retries() {
    let runtime = runtime();
    let server = StubServer::start(vec![b64_reply(b"this is not an image at all")]);
    let mut generator = generator(&server, &runtime, "image_api_mode = \"generations\"\n");
    let error = run(&mut generator, 1, 1).unwrap_err();
    assert!(matches!(error, GeneratorError::ImageApiMalformed { attempts: 2, .. }), "{error}");
    assert!(error.to_string().contains("no known image format"), "{error}");
    assert_eq!(server.request_count(), 2);
}

#[test]
fn oversized_response_is_rejected() {
    let runtime = runtime();
    let server = StubServer::start(vec![b64_reply(&vec![0u8; 6000])]);
    let mut generator = generator(&server, &runtime, "image_api_mode = \"generations\"\nimage_api_max_bytes = 4000\n");
    let error = run(&mut generator, 1, 1).unwrap_err().to_string();
    assert!(error.contains("above the limit of 4000 bytes"), "{error}");
}

#[test]
fn wrong_content_type_is_rejected() {
    let runtime = runtime();
    let server = StubServer::start(vec![StubResponse::raw(200, "text/plain", b"hello".to_vec())]);
    let mut generator = generator(&server, &runtime, "image_api_mode = \"generations\"\n");
    let error = run(&mut generator, 1, 1).unwrap_err().to_string();
    assert!(error.contains("text/plain"), "{error}");
}

#[test]
fn throttling_then_success() {
    let runtime = runtime();
    let throttled = StubResponse::json(429, &serde_json::json!({"error": "rate limit"})).with_header("Retry-After", "0");
    let server = StubServer::start(vec![throttled, b64_reply(&png(28, 28, [128, 128, 128]))]);
    let mut generator = generator(&server, &runtime, "image_api_mode = \"generations\"\n");
    let output = run(&mut generator, 1, 1).unwrap();
    assert!((output.double_value(&[0, 0, 0, 0]) - 128.0 / 255.0).abs() < 1e-3);
    assert_eq!(server.request_count(), 2);
}

#[test]
fn server_down_is_retryable() {
    let runtime = runtime();
    let server = StubServer::start(vec![StubResponse::json(500, &serde_json::json!({"error": "boom"}))]);
    let mut generator = generator(&server, &runtime, "image_api_mode = \"generations\"\n");
    let error = run(&mut generator, 1, 1).unwrap_err();
    assert!(error.is_retryable(), "{error}");
}
