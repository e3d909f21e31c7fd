//! The LLM knowledge source against a scripted chat-completions server on 127.0.0.1.

mod generator_support;

use std::time::Duration;

use kka_shared::config::Config;
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use kka_worker::knowledge::http::Backoff;
use kka_worker::knowledge::{KnowledgeError, LlmClient};

use generator_support::{StubResponse, StubServer};

const FAST: Backoff = Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(20) };

fn chat_reply(content: &str) -> StubResponse {
    StubResponse::json(200, &serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
    }))
}

fn good_reply() -> StubResponse {
    chat_reply(
        r#"{"concepts": [
            {"description": "a coat shown upside down", "operation": "flip", "params": {"axis": 1}},
            {"description": "a coat with one sleeve missing", "operation": "erase", "params": {"area": 0.2, "center_x": 0.15}}
        ]}"#,
    )
}

fn client(server: &StubServer, extra: &str) -> LlmClient {
    let config = Config::from_toml(&format!(
        "[knowledge]\nsource = \"llm\"\nllm_url = \"{}\"\nllm_timeout_secs = 1\nllm_max_attempts = 3\nllm_api_key_env = \"KKA_TEST_LLM_KEY_UNSET\"\n{extra}",
        server.base_url()
    ))
    .unwrap();
    LlmClient::new(&config.knowledge).unwrap().with_backoff(FAST)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn good_reply_gives_concepts() {
    let server = StubServer::start(vec![good_reply()]);
    let concepts = runtime().block_on(client(&server, "").concepts("prompt text", None)).unwrap();
    assert_eq!(concepts.len(), 2);
    assert_eq!(concepts[0].operation, "flip");
    assert_eq!(concepts[1].params["center_x"], 0.15);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/chat/completions");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][1]["content"], "prompt text");
    assert!(body["messages"][0]["content"].as_str().unwrap().contains("exactly 8 concepts"));
    assert_eq!(requests[0].header("authorization"), None, "no key is sent when the variable is unset");
}

#[test]
fn api_key_is_sent_as_bearer() {
    let server = StubServer::start(vec![good_reply()]);
    // A variable name of this test alone, so parallel tests do not see it.
    std::env::set_var("KKA_TEST_LLM_KEY_BEARER", "sk-test-123");
    let config = Config::from_toml(&format!(
        "[knowledge]\nsource = \"llm\"\nllm_url = \"{}\"\nllm_api_key_env = \"KKA_TEST_LLM_KEY_BEARER\"\n",
        server.base_url()
    ))
    .unwrap();
    let keyed = LlmClient::new(&config.knowledge).unwrap();
    runtime().block_on(keyed.concepts("p", None)).unwrap();
    assert_eq!(server.requests()[0].header("authorization"), Some("Bearer sk-test-123"));
    assert!(!format!("{keyed:?}").contains("sk-test-123"), "the key must not appear in debug output");
}

#[test]
fn malformed_then_good_is_retried() {
    let server = StubServer::start(vec![chat_reply("Sure! Here are some ideas: rotate it."), good_reply()]);
    let concepts = runtime().block_on(client(&server, "").concepts("p", None)).unwrap();
    assert_eq!(concepts.len(), 2);
    assert_eq!(server.request_count(), 2);
}

#[test]
fn too_many_requests_then_good_is_retried() {
    let throttled = StubResponse::json(429, &serde_json::json!({"error": "slow down"})).with_header("Retry-After", "0");
    let server = StubServer::start(vec![throttled, good_reply()]);
    let concepts = runtime().block_on(client(&server, "").concepts("p", None)).unwrap();
    assert_eq!(concepts.len(), 2);
    assert_eq!(server.request_count(), 2);
}

#[test]
fn timeout_then_good_is_retried() {
    let slow = good_reply().delayed(Duration::from_millis(2500));
    let server = StubServer::start(vec![slow, good_reply()]);
    let concepts = runtime().block_on(client(&server, "").concepts("p", None)).unwrap();
    assert_eq!(concepts.len(), 2);
    assert_eq!(server.request_count(), 2);
}

#[test]
fn persistent_garbage_reports_the_excerpt() {
    let server = StubServer::start(vec![chat_reply("I cannot help with that request.")]);
    let error = runtime().block_on(client(&server, "").concepts("p", None)).unwrap_err();
    assert!(matches!(error, KnowledgeError::LlmMalformed { attempts: 3, .. }), "{error}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("I cannot help"), "{error}");
    assert_eq!(server.request_count(), 3);
}

#[test]
fn server_errors_exhaust_attempts_as_retryable() {
    let server = StubServer::start(vec![StubResponse::json(503, &serde_json::json!({"error": "overloaded"}))]);
    let error = runtime().block_on(client(&server, "").concepts("p", None)).unwrap_err();
    assert!(matches!(error, KnowledgeError::LlmUnavailable { attempts: 3, .. }), "{error}");
    assert!(error.is_retryable());
}

#[test]
fn client_error_is_not_retried() {
    let server = StubServer::start(vec![StubResponse::json(401, &serde_json::json!({"error": "invalid key"}))]);
    let error = runtime().block_on(client(&server, "").concepts("p", None)).unwrap_err();
    assert!(matches!(error, KnowledgeError::LlmRejected { status: 401, .. }), "{error}");
    assert!(error.to_string().contains("KKA_TEST_LLM_KEY_UNSET"), "{error}");
    assert_eq!(server.request_count(), 1);
}

#[test]
fn wrong_content_type_is_malformed() {
    let server = StubServer::start(vec![StubResponse::raw(200, "text/html", b"<html>login</html>".to_vec())]);
    let error = runtime().block_on(client(&server, "").concepts("p", None)).unwrap_err();
    assert!(error.to_string().contains("text/html"), "{error}");
}

#[test]
fn replies_are_cached_in_redis() {
    let prefix = TestPrefix::new("llm-cache", "");
    let runtime = runtime();
    let store = runtime.block_on(Store::connect(&prefix.config.store)).unwrap();
    let server = StubServer::start(vec![good_reply()]);
    let client = client(&server, "");

    let first = runtime.block_on(client.concepts("cached prompt", Some(&store))).unwrap();
    let second = runtime.block_on(client.concepts("cached prompt", Some(&store))).unwrap();
    assert_eq!(first, second);
    assert_eq!(server.request_count(), 1, "the second call must come from the cache");

    runtime.block_on(client.concepts("another prompt", Some(&store))).unwrap();
    assert_eq!(server.request_count(), 2);

    let keys: Vec<String> = runtime
        .block_on(async {
            let mut connection = store.connection();
            redis::cmd("KEYS").arg(format!("{}:llm-cache:*", prefix.prefix)).query_async(&mut connection).await
        })
        .unwrap();
    assert_eq!(keys.len(), 2);
    let ttl: i64 = runtime
        .block_on(async { redis::cmd("TTL").arg(&keys[0]).query_async(&mut store.connection()).await })
        .unwrap();
    assert!(ttl > 0 && ttl <= 604_800, "ttl {ttl}");
}

#[test]
fn unusable_cached_reply_is_replaced() {
    let prefix = TestPrefix::new("llm-cache-bad", "");
    let runtime = runtime();
    let store = runtime.block_on(Store::connect(&prefix.config.store)).unwrap();
    let server = StubServer::start(vec![good_reply()]);
    let client = client(&server, "");

    // Warm the cache, then overwrite the entry with garbage.
    runtime.block_on(client.concepts("prompt", Some(&store))).unwrap();
    let keys: Vec<String> = runtime
        .block_on(async { redis::cmd("KEYS").arg(format!("{}:llm-cache:*", prefix.prefix)).query_async(&mut store.connection()).await })
        .unwrap();
    let () = runtime.block_on(async { redis::cmd("SET").arg(&keys[0]).arg("garbage").query_async(&mut store.connection()).await }).unwrap();

    let concepts = runtime.block_on(client.concepts("prompt", Some(&store))).unwrap();
    assert_eq!(concepts.len(), 2);
    assert_eq!(server.request_count(), 2);
}
